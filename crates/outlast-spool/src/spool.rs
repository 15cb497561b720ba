//! The spool itself: the writer (append, rotation, cap, group commit), the readers (one per
//! lane, with acks and the cursor), lane adoption, and the background thread (interval
//! fsyncs, deletion of acknowledged segments).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outlast_core::{Payload, unix_nanos};

use crate::config::{Durability, FullPolicy, SpoolConfig};
use crate::cursor::{self, CursorFile};
use crate::error::{AppendError, AppendErrorKind, SpoolError};
use crate::format::{self, CursorState, SEGMENT_HEADER_LEN};
use crate::fs::{SpoolFile, SpoolFs, write_all_at};
use crate::identity;
use crate::lane::{self, SegMeta};
use crate::scan::{FrameReader, Next};
use crate::types::{
    Appended, Dropped, ForeignLane, ReadBatch, Record, RecordId, RecordedIdentity, RecoveryReport,
    SpoolStats,
};

/// In [`Durability::FsyncEveryAppend`] mode (which has no data fsync interval), how often
/// the background thread fsyncs the cursor: 1 s, like the default data fsync interval. Every
/// acknowledgement reaches the OS at once whatever the mode; this bounds what a power loss
/// can take back.
pub const CURSOR_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a group commit waits for the callers of the previous one to join it.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// Read size of the reader's window buffer.
const READ_CHUNK: usize = 256 * 1024;
/// How many new lane numbers `open` tries when every existing lane is locked.
const NEW_LANE_ATTEMPTS: u32 = 64;

/// `now + d`, saturated: a duration too long to add (a user's `Duration::MAX`, or an
/// interval of centuries from an environment variable) means "not within a century", which
/// is never in practice.
fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Free bytes of the file system holding `path`, for an unprivileged user (`statvfs`'s
/// `f_bavail` blocks of `f_frsize` bytes); `None` if it cannot be measured.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves plain data behind (no invariant spans
    // an unwinding point), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One lane held by this process: its own, or an adopted one.
#[derive(Debug)]
struct Lane {
    id: u32,
    dir: PathBuf,
    adopted: bool,
    lock_file: Mutex<Option<File>>,
    /// Segment index, oldest first. Lock order: writer, consumer, segs.
    segs: Mutex<Vec<SegMeta>>,
    consumer: Mutex<Consumer>,
    /// Held across a cursor fdatasync (see [`Lane::sync_cursor`]). Lock order: writer,
    /// cursor_sync, consumer.
    cursor_sync: Mutex<()>,
    /// Mirror of `consumer.acked`, readable without the consumer lock.
    acked: AtomicU64,
    /// Newest sequence number stored in the lane (0: none).
    last_seq: AtomicU64,
    /// Next sequence number (own lane: the writer's; adopted: recovered).
    next_seq: AtomicU64,
    /// The own lane has no identity file yet: one is written before its first record.
    identity_pending: AtomicBool,
}

#[derive(Debug)]
struct Consumer {
    acked: u64,
    /// The lane's cursor file; every change of `acked` is written to it.
    cursor: CursorFile,
    /// Records up to this seq were handed out (or skipped) since the last rewind.
    handed: u64,
    /// The highest seq ever read since open; not reset by a rewind, so that damage read
    /// past again after a rewind is not counted again.
    read_through: u64,
    /// The highest segment id whose damaged tail was counted.
    tail_damage_counted: u64,
    reader: Option<(u64, FrameReader)>,
    /// Records handed out and not yet acknowledged whose segment was evicted or expired
    /// meanwhile: an ack counts them delivered; a rewind counts them lost (in `lost`).
    limbo: Vec<Limbo>,
    /// Records of `limbo` found lost by a rewind, reported by the next read of the lane.
    lost: Lost,
}

/// Why a segment was dropped with records in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropCause {
    Evicted,
    Expired,
}

/// Records handed out, then dropped from disk before they were acknowledged: their fate is
/// the caller's (acked: delivered; rewound: lost), so they are counted only when it is known.
#[derive(Debug, Clone, Copy)]
struct Limbo {
    /// Sequence numbers `from..=to` of the dropped segment that were handed out.
    from: u64,
    to: u64,
    records: u64,
    bytes: u64,
    cause: DropCause,
}

/// Lost records waiting to be reported by the next read.
#[derive(Debug, Default)]
struct Lost {
    evicted: Dropped,
    expired: Dropped,
}

impl Consumer {
    /// Splits a segment being dropped (evicted or expired) into the records no one has seen,
    /// counted into `now`, and those handed out and not acknowledged, kept in limbo until an
    /// ack (delivered) or a rewind (lost) says what became of them. Each record is counted
    /// once: delivered or dropped, never both.
    fn drop_counts(&mut self, m: &SegMeta, cause: DropCause, now: &mut Dropped) {
        let framed = m.len.saturating_sub(SEGMENT_HEADER_LEN);
        let per = |n: u64| {
            (framed.saturating_mul(n))
                .checked_div(m.records)
                .unwrap_or(0)
        };
        let unread = m.unacked(self.handed);
        let in_flight = m.unacked(self.acked).saturating_sub(unread);
        now.add(unread, per(unread));
        if in_flight > 0 {
            self.limbo.push(Limbo {
                from: m.first_seq.max(self.acked.saturating_add(1)),
                to: m.last_seq.min(self.handed),
                records: in_flight,
                bytes: per(in_flight),
                cause,
            });
        }
    }

    /// An ack through `seq`: records of limbo up to it were delivered.
    fn settle_limbo(&mut self, seq: u64) {
        self.limbo.retain_mut(|x| {
            if x.to <= seq {
                return false;
            }
            if x.from <= seq {
                let left = (x.to - seq).min(x.records);
                x.bytes = (x.bytes.saturating_mul(left))
                    .checked_div(x.records)
                    .unwrap_or(0);
                x.records = left;
                x.from = seq + 1;
            }
            true
        });
    }

    /// A rewind: what is in limbo was not delivered and is gone from disk: lost.
    fn rewind(&mut self) {
        for x in std::mem::take(&mut self.limbo) {
            match x.cause {
                DropCause::Evicted => self.lost.evicted.add(x.records, x.bytes),
                DropCause::Expired => self.lost.expired.add(x.records, x.bytes),
            }
        }
        self.handed = self.acked;
        self.reader = None;
    }
}

#[derive(Debug)]
struct ActiveSeg {
    id: u64,
    file: Arc<dyn SpoolFile>,
    offset: u64,
}

#[derive(Debug)]
struct Writer {
    seg: Option<ActiveSeg>,
    next_seg_id: u64,
    next_seq: u64,
    buf: Vec<u8>,
    /// The active segment may hold a partial frame past `offset`: start a new one.
    needs_rotation: bool,
    /// Segments sealed by a rotation whose data may not be fdatasynced yet, oldest first.
    /// Rotation leaves their fdatasync to the background thread (woken at once) so that the
    /// appender does not wait for a segment's worth of writeback; any group commit
    /// ([`Inner::sync_through`]) syncs them first.
    unsynced: Vec<Arc<dyn SpoolFile>>,
    /// A rotation created a segment file whose directory entry is not fsynced yet.
    dir_unsynced: bool,
    closed: bool,
}

impl Writer {
    /// The writer of the own lane as recovery left it: it resumes the last segment if that
    /// is intact and has room; otherwise the first append starts a new one.
    fn resume(
        fs: &dyn SpoolFs,
        config: &SpoolConfig,
        own: &Lane,
        rec: &lane::RecoveredLane,
    ) -> Writer {
        let mut writer = Writer {
            seg: None,
            next_seg_id: rec.max_file_id + 1,
            next_seq: rec.next_seq,
            buf: Vec::new(),
            needs_rotation: false,
            unsynced: Vec::new(),
            dir_unsynced: false,
            closed: false,
        };
        if let Some((id, len)) = rec.resumable
            && len < config.segment_bytes_value()
        {
            let path = own.dir.join(format::segment_file_name(id));
            if let Ok(file) = fs.open(&path, true) {
                writer.seg = Some(ActiveSeg {
                    id,
                    file,
                    offset: len,
                });
                if let Some(m) = lock(&own.segs).last_mut() {
                    m.sealed = false;
                }
            }
        }
        writer
    }
}

/// Records the spool's identity in the own lane if it has none yet (a new lane, or one
/// written before identities were recorded), before the lane takes a record.
fn record_identity(fs: &dyn SpoolFs, own: &Lane, mine: Option<&str>) -> io::Result<()> {
    if !own.identity_pending.load(Ordering::Acquire) {
        return Ok(());
    }
    identity::write_identity(fs, &own.dir, mine)?;
    own.identity_pending.store(false, Ordering::Release);
    Ok(())
}

/// Group commit bookkeeping, under `Inner::sync`.
#[derive(Debug, Default)]
struct SyncState {
    /// Everything the writer wrote up to this LSN is fdatasynced.
    synced_lsn: u64,
    /// A caller is running a commit (the others wait on `Inner::sync_cv`).
    in_progress: bool,
    /// The LSN each caller inside `sync_through` waits for (one entry per caller).
    waiting: Vec<u64>,
    /// Callers the last commit satisfied, and how long it took: the next commit waits
    /// briefly for that many callers before it starts (see `Inner::gather`).
    last_group: usize,
    last_commit: Duration,
}

impl SyncState {
    /// Callers still waiting for a commit (not yet satisfied by the last one).
    fn unsatisfied(&self) -> usize {
        self.waiting
            .iter()
            .filter(|&&l| l > self.synced_lsn)
            .count()
    }
}

#[derive(Debug, Default)]
struct Counters {
    evicted: Dropped,
    expired: Dropped,
    corrupt: u64,
    missing: u64,
    foreign_lanes: usize,
}

#[derive(Debug)]
struct Inner {
    config: SpoolConfig,
    /// The cap in force: `max_total_bytes`, lowered at open to fit the file system (see
    /// [`crate::DISK_FREE_SHARE_PERCENT`]).
    cap: u64,
    fs: Arc<dyn SpoolFs>,
    own: Arc<Lane>,
    adopted: RwLock<Vec<Arc<Lane>>>,
    writer: Mutex<Writer>,
    /// Bytes written by the writer since open (a log sequence number for group commit).
    written_lsn: AtomicU64,
    sync: Mutex<SyncState>,
    sync_cv: Condvar,
    /// Wakes a committer that is gathering callers (see `Inner::gather`).
    gather_cv: Condvar,
    total_bytes: AtomicU64,
    counters: Mutex<Counters>,
    closed: AtomicBool,
    /// Fully acknowledged segments already removed from the index and the byte count,
    /// waiting for the background thread to unlink them (unlinking a large file costs
    /// milliseconds; acks should not wait for it).
    doomed: Mutex<Vec<PathBuf>>,
    /// Held while unlinking doomed segments, so that `sync` returns only once deletions the
    /// background thread started are done too.
    deleting: Mutex<()>,
    /// Wakes the background thread (`None`: no thread; delete inline).
    wake: Mutex<Option<mpsc::Sender<Wake>>>,
}

/// The disk spool. See the [crate documentation](crate) for the format and guarantees.
///
/// `Send + Sync`: share it as `Arc<Spool>`; appends and reads may run concurrently.
#[derive(Debug)]
pub struct Spool {
    inner: Arc<Inner>,
    background: Option<(mpsc::Sender<Wake>, JoinHandle<()>)>,
}

/// Messages to the background thread.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// Segments were queued in `Inner::doomed`: delete them.
    Delete,
    /// A segment was sealed: fdatasync it (and the new one's header and directory entry),
    /// then the lane's cursor.
    Rotated,
    /// The spool is closing.
    Stop,
}

fn now_ns() -> u64 {
    unix_nanos(SystemTime::now())
}

impl Lane {
    fn new(id: u32, dir: PathBuf, adopted: bool, file: File, rec: &lane::RecoveredLane) -> Lane {
        let last = rec.segs.iter().map(|s| s.last_seq).max().unwrap_or(0);
        let acked = rec.cursor.state.acked_through;
        let cursor = CursorFile::new(&dir, &rec.cursor);
        Lane {
            id,
            dir,
            adopted,
            lock_file: Mutex::new(Some(file)),
            segs: Mutex::new(rec.segs.clone()),
            consumer: Mutex::new(Consumer {
                acked,
                cursor,
                handed: acked,
                read_through: acked,
                tail_damage_counted: 0,
                reader: None,
                limbo: Vec::new(),
                lost: Lost::default(),
            }),
            cursor_sync: Mutex::new(()),
            acked: AtomicU64::new(acked),
            last_seq: AtomicU64::new(last),
            next_seq: AtomicU64::new(rec.next_seq),
            identity_pending: AtomicBool::new(false),
        }
    }

    fn cursor_state(&self, acked: u64) -> CursorState {
        CursorState {
            acked_through: acked,
            next_seq: self.next_seq.load(Ordering::Acquire),
        }
    }

    /// Writes the ack point into the cursor's free slot (one `pwrite`, no fsync).
    fn write_cursor(&self, fs: &dyn SpoolFs, c: &mut Consumer) -> Result<(), SpoolError> {
        let state = self.cursor_state(c.acked);
        c.cursor
            .write(fs, state)
            .map_err(|e| SpoolError::io(c.cursor.path(), e))
    }

    /// Makes the ack point durable: writes it if it is not written yet, and fdatasyncs the
    /// cursor file if anything was written since its last fdatasync. The fdatasync runs
    /// without the consumer lock, so readers and acks are not held up by the disk, but under
    /// `cursor_sync`: a second caller must not find nothing left to write and return while
    /// the first caller's fdatasync is still running (or about to fail).
    fn sync_cursor(&self, fs: &dyn SpoolFs) -> Result<(), SpoolError> {
        let _one_at_a_time = lock(&self.cursor_sync);
        let file = {
            let mut c = lock(&self.consumer);
            let state = self.cursor_state(c.acked);
            c.cursor
                .prepare_sync(fs, state)
                .map_err(|e| SpoolError::io(c.cursor.path(), e))?
        };
        let Some(file) = file else { return Ok(()) };
        if let Err(e) = file.sync_data() {
            let mut c = lock(&self.consumer);
            c.cursor.sync_failed();
            return Err(SpoolError::io(c.cursor.path(), e));
        }
        Ok(())
    }
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
    /// faults this way, see [`crate::fault::FaultFs`]).
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
        lane::prepare_root(&root, true)?;
        let mut report = RecoveryReport::default();
        let (own, adopted) = take_lanes(&config, &*fs, &root, &mut report)?;
        report.lane = own.n;
        let inner = Arc::new(Inner::new(config, fs, own, adopted, &mut report));
        // Segments left fully acked by an earlier process can go now.
        for l in inner.lanes() {
            let mut c = lock(&l.consumer);
            if let Err(e) = inner.delete_acked(&l, &mut c) {
                tracing::warn!(lane = l.id, error = %e, "could not delete acknowledged segments");
            }
        }
        let background = start_background(&inner);
        *lock(&inner.wake) = background.as_ref().map(|(tx, _)| tx.clone());
        tracing::debug!(
            lane = report.lane,
            records = report.records,
            adopted = ?report.adopted_lanes,
            "spool opened"
        );
        Ok((Spool { inner, background }, report))
    }

    /// Appends one record at the tail of this process's lane.
    ///
    /// In [`Durability::OsWrite`] mode the frame has been handed to the OS with one
    /// `write(2)` when this returns (it survives `kill -9`); in
    /// [`Durability::FsyncEveryAppend`] mode it has also been fsynced (this blocks: from async
    /// code call it via `spawn_blocking`).
    ///
    /// # Errors
    ///
    /// The payload comes back in the [`AppendError`]: [`AppendErrorKind::TooLarge`] if the
    /// framed record exceeds `max_record_bytes`, [`AppendErrorKind::Full`] at the cap with
    /// the drop-newest policy, [`AppendErrorKind::Io`] if writing fails (what was stored
    /// before is unharmed), [`AppendErrorKind::Closed`] after close.
    pub fn append(&self, payload: Payload) -> Result<Appended, AppendError> {
        self.inner.append(payload)
    }

    /// Up to `max_records` (and about `max_bytes` of payload, but at least one record if any)
    /// of the oldest records not yet handed out since the last [`Spool::rewind`] (or open).
    /// Records of adopted lanes come before this lane's. Records past `max_record_age` are
    /// skipped and counted in `expired`; damaged frames are skipped and counted.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if a segment cannot be read, [`SpoolError::Closed`] after close.
    pub fn read_batch(&self, max_records: usize, max_bytes: u64) -> Result<ReadBatch, SpoolError> {
        self.inner.read_batch(max_records, max_bytes)
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
        self.inner.ack(id)
    }

    /// Forgets what was handed out but not acknowledged: the next [`Spool::read_batch`]
    /// starts again at the oldest unacknowledged record (after a failed delivery).
    pub fn rewind(&self) {
        for l in self.inner.lanes() {
            lock(&l.consumer).rewind();
        }
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
        self.inner.adopt_released()
    }

    /// Fsyncs everything written so far, persists the read progress of every lane, and
    /// finishes deleting fully acknowledged segments.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if an fsync, a cursor write or a deletion fails.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.inner.sync_all()
    }

    /// Current gauges.
    pub fn stats(&self) -> SpoolStats {
        self.inner.stats()
    }

    /// The lane this process appends to.
    pub fn lane(&self) -> u32 {
        self.inner.own.id
    }

    /// The configuration the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.inner.config
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
        drop(lock(&self.inner.wake).take());
        if let Some((tx, handle)) = self.background.take() {
            let _ = tx.send(Wake::Stop);
            // The thread never panics by design; if it did, there is nothing to recover.
            let _ = handle.join();
        }
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.inner.sync_all();
        {
            let mut w = lock(&self.inner.writer);
            w.closed = true;
            w.seg = None;
        }
        for l in self.inner.lanes() {
            {
                let mut c = lock(&l.consumer);
                c.reader = None;
                c.cursor.close();
            }
            drop(lock(&l.lock_file).take());
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

fn merge_report(into: &mut RecoveryReport, from: RecoveryReport) {
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
    into.skipped_entries.extend(from.skipped_entries);
}

/// A lane locked and recovered by `open`.
#[derive(Debug)]
struct TakenLane {
    n: u32,
    file: File,
    rec: lane::RecoveredLane,
}

/// Takes the lanes at open: the first usable lane of this identity (or with none recorded)
/// becomes the own lane, the other unlocked ones holding records are adopted; lanes of
/// another identity are scanned read-only and reported; a lane that cannot be recovered
/// (or a stray entry) costs only itself. With no own lane yet, a new lane is created.
fn take_lanes(
    config: &SpoolConfig,
    fs: &dyn SpoolFs,
    root: &std::path::Path,
    report: &mut RecoveryReport,
) -> Result<(TakenLane, Vec<Arc<Lane>>), SpoolError> {
    let (existing, stray) = lane::list_lanes(root)?;
    report.skipped_entries.extend(stray);
    let mine = config.identity_value();
    let mut own: Option<TakenLane> = None;
    let mut adopted = Vec::new();
    for &n in &existing {
        let dir = lane::lane_dir(root, n);
        let ident = identity::read_identity(fs, &dir);
        if !ident.accepts(mine) {
            report.foreign_lanes.push(foreign_lane(fs, n, &dir, ident));
            continue;
        }
        let Some((file, rec)) = lock_and_recover(fs, root, n, false, report)? else {
            continue;
        };
        if own.is_none() {
            own = Some(TakenLane { n, file, rec });
        } else if rec.segs.iter().any(|s| s.records > 0) {
            adopted.push(Arc::new(Lane::new(n, dir, true, file, &rec)));
            report.adopted_lanes.push(n);
        }
        // Otherwise the lock is released here: nothing to drain.
    }
    if let Some(&last) = existing.last()
        && own.is_none()
    {
        tracing::debug!(last, "every existing lane is held or foreign: creating one");
    }
    if own.is_none() {
        let start = existing.last().map_or(0, |&n| n.saturating_add(1));
        for n in start..start.saturating_add(NEW_LANE_ATTEMPTS) {
            if let Some((file, rec)) = lock_and_recover(fs, root, n, true, report)? {
                own = Some(TakenLane { n, file, rec });
                break;
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
        Some(own) => Ok((own, adopted)),
        None => Err(SpoolError::Locked {
            path: root.to_path_buf(),
        }),
    }
}

/// Locks lane `n` (creating it if `create`) and recovers it. `Ok(None)`: held by another
/// process, not a lane, or unusable (logged and listed in `unusable_lanes`).
fn lock_and_recover(
    fs: &dyn SpoolFs,
    root: &std::path::Path,
    n: u32,
    create: bool,
    report: &mut RecoveryReport,
) -> Result<Option<(File, lane::RecoveredLane)>, SpoolError> {
    let Some(file) = lane::try_lock_lane(root, n, create)? else {
        return Ok(None);
    };
    let dir = lane::lane_dir(root, n);
    let mut sub = RecoveryReport::default();
    match lane::recover_lane(fs, &dir, &mut sub) {
        Ok(rec) => {
            merge_report(report, sub);
            Ok(Some((file, rec)))
        }
        Err(e) => {
            tracing::warn!(lane = n, error = %e, "spool lane unusable: left as it is, another lane is used");
            report.unusable_lanes.push(n);
            Ok(None)
        }
    }
}

/// A lane of another identity, scanned without locking or changing it.
fn foreign_lane(
    fs: &dyn SpoolFs,
    n: u32,
    dir: &std::path::Path,
    ident: identity::LaneIdentity,
) -> ForeignLane {
    let (records, bytes) = crate::inspect::read_only_totals(fs, dir);
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

fn start_background(inner: &Arc<Inner>) -> Option<(mpsc::Sender<Wake>, JoinHandle<()>)> {
    let interval = match inner.config.durability_mode() {
        Durability::OsWrite { fsync_interval } => fsync_interval,
        Durability::FsyncEveryAppend => CURSOR_FSYNC_INTERVAL,
    };
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let (tx, rx) = mpsc::channel::<Wake>();
    let spawned = std::thread::Builder::new()
        .name("outlast-spool-sync".into())
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

impl Inner {
    /// Builds the spool's state from the lanes taken: prepares the cursors (and records the
    /// identity of the own lane) before any record is taken, and sets the cap in force.
    fn new(
        config: SpoolConfig,
        fs: Arc<dyn SpoolFs>,
        own: TakenLane,
        adopted: Vec<Arc<Lane>>,
        report: &mut RecoveryReport,
    ) -> Inner {
        let TakenLane { n, file, rec } = own;
        let own_dir = lane::lane_dir(config.root(), n);
        let own_lane = Arc::new(Lane::new(n, own_dir, false, file, &rec));
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
        if let Err(e) = record_identity(&*fs, &own_lane, config.identity_value()) {
            tracing::warn!(
                lane = n,
                error = %e,
                "could not record the lane's identity; the lane takes no record until it can"
            );
        }
        let free = free_bytes(config.root());
        let cap = crate::config::effective_cap(config.max_total_bytes_value(), total, free);
        report.max_total_bytes = cap;
        report.free_bytes_at_open = free;
        if cap < config.max_total_bytes_value() {
            tracing::info!(
                configured = config.max_total_bytes_value(),
                effective = cap,
                free_bytes = free,
                "spool cap lowered to fit the file system's free space"
            );
        }
        let writer = Writer::resume(&*fs, &config, &own_lane, &rec);
        Inner {
            cap,
            fs,
            own: own_lane,
            adopted: RwLock::new(adopted),
            writer: Mutex::new(writer),
            written_lsn: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            sync_cv: Condvar::new(),
            gather_cv: Condvar::new(),
            total_bytes: AtomicU64::new(total),
            counters: Mutex::new(Counters {
                corrupt: report.corrupt_frames_skipped,
                missing: report.missing_records,
                foreign_lanes: report.foreign_lanes.len(),
                ..Counters::default()
            }),
            closed: AtomicBool::new(false),
            doomed: Mutex::new(Vec::new()),
            deleting: Mutex::new(()),
            wake: Mutex::new(None),
            config,
        }
    }

    fn adopt_released(&self) -> Result<usize, SpoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        let root = self.config.root();
        let (existing, _) = lane::list_lanes(root)?;
        let held: Vec<u32> = self.lanes().iter().map(|l| l.id).collect();
        let mine = self.config.identity_value();
        let (mut adopted, mut foreign) = (0, 0);
        for n in existing.into_iter().filter(|n| !held.contains(n)) {
            let dir = lane::lane_dir(root, n);
            if !identity::read_identity(&*self.fs, &dir).accepts(mine) {
                foreign += 1;
                continue;
            }
            let mut report = RecoveryReport::default();
            let Some((file, rec)) = lock_and_recover(&*self.fs, root, n, false, &mut report)?
            else {
                continue;
            };
            if !rec.segs.iter().any(|s| s.records > 0) {
                continue; // Nothing to drain: the lock is released here.
            }
            let l = Arc::new(Lane::new(n, dir, true, file, &rec));
            if let Err(e) = lock(&l.consumer).cursor.prepare(&*self.fs) {
                tracing::warn!(lane = n, error = %e, "could not prepare an adopted lane's cursor file");
            }
            let bytes: u64 = lock(&l.segs).iter().map(|s| s.len).sum();
            self.total_bytes.fetch_add(bytes, Ordering::AcqRel);
            {
                let mut c = lock(&self.counters);
                c.corrupt += report.corrupt_frames_skipped;
                c.missing += report.missing_records;
            }
            self.adopted
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::clone(&l));
            if let Err(e) = self.delete_acked(&l, &mut lock(&l.consumer)) {
                tracing::warn!(lane = n, error = %e, "could not delete acknowledged segments");
            }
            tracing::info!(
                lane = n,
                records = report.records,
                "released spool lane adopted"
            );
            adopted += 1;
        }
        lock(&self.counters).foreign_lanes = foreign;
        Ok(adopted)
    }

    fn lanes(&self) -> Vec<Arc<Lane>> {
        let mut v: Vec<Arc<Lane>> = self
            .adopted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.push(self.own.clone());
        v
    }

    fn lane(&self, id: u32) -> Option<Arc<Lane>> {
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

    // ---------------------------------------------------------------- writer side

    fn append(&self, payload: Payload) -> Result<Appended, AppendError> {
        let max = self.config.max_record_bytes_value();
        let estimate = format::frame_len_estimate(&payload);
        if estimate > max {
            return Err(AppendError::new(
                AppendErrorKind::TooLarge {
                    size: estimate,
                    max,
                },
                payload,
            ));
        }
        let mut w = lock(&self.writer);
        if w.closed || self.closed.load(Ordering::Acquire) {
            return Err(AppendError::new(AppendErrorKind::Closed, payload));
        }
        if let Err(e) = self.own_cursor_ready() {
            return Err(AppendError::new(AppendErrorKind::Io(e), payload));
        }
        let seq = w.next_seq;
        let mut buf = std::mem::take(&mut w.buf);
        if let Err(e) = format::encode_frame(&mut buf, seq, &payload) {
            w.buf = buf;
            let kind = match e {
                format::FrameError::HeaderTooLarge { size, max } => {
                    AppendErrorKind::HeaderTooLarge { size, max }
                }
                format::FrameError::BodyTooLarge { size, max } => {
                    AppendErrorKind::TooLarge { size, max }
                }
                other => AppendErrorKind::Io(io::Error::new(io::ErrorKind::InvalidInput, other)),
            };
            return Err(AppendError::new(kind, payload));
        }
        let result = self.append_frame(&mut w, &buf, seq, &payload);
        // Keep the buffer for the next append unless one huge record inflated it.
        if buf.capacity() <= 4 * 1024 * 1024 {
            w.buf = buf;
        }
        let evicted = match result {
            Ok(evicted) => evicted,
            Err(kind) => return Err(AppendError::new(kind, payload)),
        };
        let lsn = self.written_lsn.load(Ordering::Acquire);
        drop(w);
        if self.config.durability_mode() == Durability::FsyncEveryAppend
            && let Err(e) = self.sync_through(lsn)
        {
            return Err(AppendError::new(AppendErrorKind::Io(e), payload));
        }
        Ok(Appended {
            id: RecordId {
                lane: self.own.id,
                seq,
            },
            evicted,
        })
    }

    /// Makes sure the own lane's cursor file is prepared (see [`CursorFile::prepare`]); a
    /// record is taken only then. Called with the writer lock held (lock order: writer,
    /// consumer).
    fn own_cursor_ready(&self) -> io::Result<()> {
        record_identity(&*self.fs, &self.own, self.config.identity_value())?;
        let mut c = lock(&self.own.consumer);
        if c.cursor.is_ready() {
            return Ok(());
        }
        c.cursor.prepare(&*self.fs)
    }

    /// Writes a built frame; called with the writer lock held.
    fn append_frame(
        &self,
        w: &mut Writer,
        frame: &[u8],
        seq: u64,
        payload: &Payload,
    ) -> Result<Dropped, AppendErrorKind> {
        let frame_len = frame.len() as u64;
        let max = self.config.max_record_bytes_value();
        if frame_len > max {
            return Err(AppendErrorKind::TooLarge {
                size: frame_len,
                max,
            });
        }
        let cap = self.cap;
        let seg_bytes = self.config.segment_bytes_value();
        // Will this frame need a new segment (and its header)?
        let needs_new = |w: &Writer| match &w.seg {
            None => true,
            Some(s) => w.needs_rotation || s.offset + frame_len > seg_bytes,
        };
        let mut evicted = Dropped::default();
        loop {
            let extra = if needs_new(w) { SEGMENT_HEADER_LEN } else { 0 };
            let total = self.total_bytes.load(Ordering::Acquire);
            if total + frame_len + extra <= cap {
                break;
            }
            match self.config.full_policy_value() {
                FullPolicy::DropNewest => {
                    return Err(AppendErrorKind::Full {
                        max_total_bytes: cap,
                    });
                }
                FullPolicy::DropOldest => {
                    if !self
                        .evict_oldest(w, &mut evicted)
                        .map_err(AppendErrorKind::Io)?
                    {
                        return Err(AppendErrorKind::Full {
                            max_total_bytes: cap,
                        });
                    }
                }
            }
        }
        if evicted.records > 0 {
            lock(&self.counters)
                .evicted
                .add(evicted.records, evicted.bytes);
            tracing::warn!(
                records = evicted.records,
                bytes = evicted.bytes,
                "spool full: oldest records evicted"
            );
        }
        if needs_new(w) {
            self.rotate(w, seq).map_err(AppendErrorKind::Io)?;
        }
        let Some(seg) = w.seg.as_mut() else {
            return Err(AppendErrorKind::Io(io::Error::other("no active segment")));
        };
        if let Err(e) = write_all_at(&*seg.file, frame, seg.offset) {
            // Cut the partial frame off so the next append starts at a frame boundary; if
            // even that fails, the next append starts a new segment (recovery will skip or
            // truncate the partial bytes, and readers never read past `offset`).
            if seg.file.set_len(seg.offset).is_err() {
                w.needs_rotation = true;
            }
            return Err(AppendErrorKind::Io(e));
        }
        seg.offset += frame_len;
        let seg_id = seg.id;
        let offset = seg.offset;
        w.next_seq = seq + 1;
        self.own.next_seq.store(seq + 1, Ordering::Release);
        self.own.last_seq.store(seq, Ordering::Release);
        self.total_bytes.fetch_add(frame_len, Ordering::AcqRel);
        {
            let mut segs = lock(&self.own.segs);
            if let Some(m) = segs.iter_mut().rev().find(|m| m.id == seg_id) {
                m.len = offset;
                m.note_record(seq, payload.meta().created_at_unix_nanos);
            }
        }
        self.written_lsn.fetch_add(frame_len, Ordering::AcqRel);
        Ok(evicted)
    }

    /// Seals the active segment and starts a new one; writer lock held.
    ///
    /// With the background thread running, the sealed segment's fdatasync, the new header's
    /// and the directory entry's are left to it: it is woken at once and syncs them through
    /// the group commit, which any [`Spool::sync`] or durable append also goes through, so
    /// no promise depends on who gets there first. Without the thread, they are done here
    /// (if the thread exists but cannot be woken, the spool is closing: close syncs them).
    fn rotate(&self, w: &mut Writer, first_seq: u64) -> io::Result<()> {
        let background = lock(&self.wake).clone();
        if let Some(old) = w.seg.take() {
            if background.is_some() {
                w.unsynced.push(Arc::clone(&old.file));
            } else if let Err(e) = old.file.sync_data() {
                w.seg = Some(old);
                return Err(e);
            }
            let mut segs = lock(&self.own.segs);
            if let Some(m) = segs.iter_mut().find(|m| m.id == old.id) {
                m.sealed = true;
                m.len = old.offset;
            }
        }
        let id = w.next_seg_id;
        let path = self.own.dir.join(format::segment_file_name(id));
        let file = self.fs.create_new(&path)?;
        let header = format::encode_segment_header(id, first_seq);
        let setup = write_all_at(&*file, &header, 0).and_then(|()| {
            if background.is_some() {
                Ok(())
            } else {
                file.sync_data()
                    .and_then(|()| self.fs.sync_dir(&self.own.dir))
            }
        });
        if let Err(e) = setup {
            // A stub without a full header holds nothing; recovery would remove it.
            let _ = self.fs.remove_file(&path);
            w.next_seg_id += 1;
            return Err(e);
        }
        w.next_seg_id += 1;
        w.needs_rotation = false;
        w.dir_unsynced |= background.is_some();
        w.seg = Some(ActiveSeg {
            id,
            file,
            offset: SEGMENT_HEADER_LEN,
        });
        self.total_bytes
            .fetch_add(SEGMENT_HEADER_LEN, Ordering::AcqRel);
        lock(&self.own.segs).push(SegMeta::new(id, path, SEGMENT_HEADER_LEN));
        // Rotation is a durability point for the read progress too (nothing to do if no ack
        // came since the last fdatasync). A failure is retried by the next interval, sync or
        // close, which report it; the append itself is unharmed.
        let woken = background.is_some_and(|tx| tx.send(Wake::Rotated).is_ok());
        if !woken && let Err(e) = self.own.sync_cursor(&*self.fs) {
            tracing::warn!(lane = self.own.id, error = %e, "cursor fsync on rotation failed");
        }
        Ok(())
    }

    /// Deletes the oldest whole segment (adopted lanes first); writer lock held. Returns
    /// whether anything was freed. Records of it no one has read count in `evicted`; those
    /// handed out and not yet acknowledged are counted once their fate is known (see
    /// [`Consumer::drop_counts`]).
    fn evict_oldest(&self, w: &mut Writer, evicted: &mut Dropped) -> io::Result<bool> {
        let adopted = self
            .adopted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for l in &adopted {
            let mut c = lock(&l.consumer);
            let victim = {
                let mut segs = lock(&l.segs);
                if segs.is_empty() {
                    None
                } else {
                    Some(segs.remove(0))
                }
            };
            if let Some(m) = victim {
                self.drop_segment(l, &mut c, m, DropCause::Evicted, evicted)?;
                return Ok(true);
            }
        }
        let active = w.seg.as_ref().map(|s| s.id);
        {
            let mut c = lock(&self.own.consumer);
            let victim = {
                let mut segs = lock(&self.own.segs);
                segs.iter()
                    .position(|m| Some(m.id) != active)
                    .map(|i| segs.remove(i))
            };
            if let Some(m) = victim {
                self.drop_segment(&self.own, &mut c, m, DropCause::Evicted, evicted)?;
                return Ok(true);
            }
        }
        // Only the active segment is left: seal it so it can go.
        let has_records = lock(&self.own.segs).last().is_some_and(|m| m.records > 0);
        if has_records {
            let next = w.next_seq;
            self.rotate(w, next)?;
            return self.evict_oldest(w, evicted);
        }
        Ok(false)
    }

    /// Counts a segment removed from the index: its unacknowledged records into `dropped`,
    /// its bytes off the total.
    fn forget_segment(&self, l: &Lane, m: &SegMeta, dropped: &mut Dropped) {
        let acked = l.acked.load(Ordering::Acquire);
        let n = m.unacked(acked);
        let bytes = (m.len.saturating_sub(SEGMENT_HEADER_LEN) * n)
            .checked_div(m.records)
            .unwrap_or(0);
        dropped.add(n, bytes);
        let _ = self
            .total_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(m.len))
            });
    }

    /// Deletes a segment taken out of the index with records not acknowledged (evicted or
    /// expired), counting them as [`Consumer::drop_counts`] says; consumer lock held.
    fn drop_segment(
        &self,
        l: &Lane,
        c: &mut Consumer,
        m: SegMeta,
        cause: DropCause,
        dropped: &mut Dropped,
    ) -> io::Result<()> {
        c.drop_counts(&m, cause, dropped);
        self.forget_segment(l, &m, &mut Dropped::default());
        match self.fs.remove_file(&m.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Group commit: returns once everything up to `lsn` is fsynced, sharing one fsync among
    /// concurrent callers (one becomes the committer, the others wait for it). The committer
    /// fdatasyncs the segments sealed since the last commit, then the active one, then the
    /// lane directory if a rotation created a file in it.
    fn sync_through(&self, lsn: u64) -> io::Result<()> {
        let mut st = lock(&self.sync);
        if st.synced_lsn >= lsn {
            return Ok(());
        }
        st.waiting.push(lsn);
        self.gather_cv.notify_one();
        let result = loop {
            if st.synced_lsn >= lsn {
                break Ok(());
            }
            if st.in_progress {
                st = self.sync_cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.in_progress = true;
            st = self.gather(st);
            let before = st.synced_lsn;
            drop(st);
            let started = Instant::now();
            // Every byte written and not yet durable is in `unsynced` or the active segment.
            let (target, sealed, active, dir) = {
                let mut w = lock(&self.writer);
                (
                    self.written_lsn.load(Ordering::Acquire),
                    std::mem::take(&mut w.unsynced),
                    w.seg.as_ref().map(|s| Arc::clone(&s.file)),
                    std::mem::take(&mut w.dir_unsynced),
                )
            };
            let r = sealed
                .iter()
                .chain(active.as_ref())
                .try_for_each(|f| f.sync_data())
                .and_then(|()| {
                    if dir {
                        self.fs.sync_dir(&self.own.dir)
                    } else {
                        Ok(())
                    }
                });
            if r.is_err() {
                // Hand the work back to the next commit, ahead of anything sealed since.
                let mut w = lock(&self.writer);
                let newer = std::mem::replace(&mut w.unsynced, sealed);
                w.unsynced.extend(newer);
                w.dir_unsynced |= dir;
            }
            st = lock(&self.sync);
            st.in_progress = false;
            if r.is_ok() {
                st.synced_lsn = st.synced_lsn.max(target);
                st.last_group = st
                    .waiting
                    .iter()
                    .filter(|&&l| l > before && l <= target)
                    .count();
                st.last_commit = started.elapsed();
            }
            self.sync_cv.notify_all();
            if let Err(e) = r {
                break Err(e);
            }
        };
        if let Some(i) = st.waiting.iter().position(|&l| l == lsn) {
            st.waiting.swap_remove(i);
        }
        result
    }

    /// Called by the committer before it starts. When the last commit was shared by several
    /// callers, they are likely to append again at once; without waiting, this commit would
    /// cover only those that got in first and the rest would need one more fsync. So it
    /// waits until as many callers wait as the last commit satisfied, for at most half that
    /// commit's duration (and [`MAX_GATHER`]). A lone caller never waits.
    fn gather<'a>(&self, mut st: MutexGuard<'a, SyncState>) -> MutexGuard<'a, SyncState> {
        if st.last_group <= 1 {
            return st;
        }
        let deadline = later(Instant::now(), (st.last_commit / 2).min(MAX_GATHER));
        while st.unsatisfied() < st.last_group {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.gather_cv.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st
    }

    fn sync_data(&self) -> Result<(), SpoolError> {
        let lsn = self.written_lsn.load(Ordering::Acquire);
        self.sync_through(lsn)
            .map_err(|e| SpoolError::io(&self.own.dir, e))
    }

    fn sync_all(&self) -> Result<(), SpoolError> {
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
    fn after_rotation(&self) -> Result<(), SpoolError> {
        self.sync_data()?;
        self.own.sync_cursor(&*self.fs)
    }

    fn periodic(&self) -> Result<(), SpoolError> {
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

    // ---------------------------------------------------------------- reader side

    fn read_batch(&self, max_records: usize, max_bytes: u64) -> Result<ReadBatch, SpoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        let mut batch = ReadBatch::default();
        let mut bytes = 0u64;
        let max_records = max_records.max(1);
        for l in self.lanes() {
            if batch.records.len() >= max_records {
                break;
            }
            self.read_lane(&l, &mut batch, &mut bytes, max_records, max_bytes)?;
        }
        if batch.expired.records > 0 || batch.corrupt_skipped > 0 || batch.evicted.records > 0 {
            let mut c = lock(&self.counters);
            c.expired.add(batch.expired.records, batch.expired.bytes);
            c.evicted.add(batch.evicted.records, batch.evicted.bytes);
            c.corrupt += batch.corrupt_skipped;
        }
        Ok(batch)
    }

    fn read_lane(
        &self,
        l: &Arc<Lane>,
        batch: &mut ReadBatch,
        bytes: &mut u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<(), SpoolError> {
        let mut c = lock(&l.consumer);
        let lost = std::mem::take(&mut c.lost);
        batch.evicted.add(lost.evicted.records, lost.evicted.bytes);
        batch.expired.add(lost.expired.records, lost.expired.bytes);
        let acked_before = c.acked;
        let result = self.read_lane_locked(l, &mut c, batch, bytes, max_records, max_bytes);
        if c.acked != acked_before
            && let Err(e) = l.write_cursor(&*self.fs, &mut c)
        {
            // Expired records at the head counted as acknowledged. The records read must
            // still be returned; the next ack, sync or close writes the cursor again.
            tracing::warn!(lane = l.id, error = %e, "could not write the cursor after expiry");
        }
        drop(c);
        let exhausted = matches!(result, Ok(true));
        if exhausted && l.adopted {
            self.maybe_remove_lane(l);
        }
        result.map(|_| ())
    }

    /// Reads from one lane into `batch`. `Ok(true)`: the lane has nothing more to read.
    fn read_lane_locked(
        &self,
        l: &Arc<Lane>,
        c: &mut Consumer,
        batch: &mut ReadBatch,
        bytes: &mut u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<bool, SpoolError> {
        let expiry = self
            .config
            .max_record_age_value()
            .map(|age| now_ns().saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX)));
        if let Some(limit) = expiry {
            self.expire_segments(l, c, limit, &mut batch.expired)
                .map_err(|e| SpoolError::io(&l.dir, e))?;
        }
        loop {
            if batch.records.len() >= max_records {
                return Ok(false);
            }
            // Where are we? Pick the segment to read and its readable length.
            let target = {
                let segs = lock(&l.segs);
                let cur = c.reader.as_ref().map(|(id, _)| *id);
                // The index is in sequence order (recovery orders misplaced segments),
                // which is not always the order of the ids: positions, not ids, say what
                // comes next.
                let first_unread = || segs.iter().position(|m| m.last_seq > c.handed || !m.sealed);
                let pos = match cur {
                    Some(id) => segs.iter().position(|m| m.id == id).or_else(first_unread),
                    // Deleted under us (evicted or expired): go on after what was handed.
                    None => first_unread(),
                };
                pos.map(|i| {
                    let m = &segs[i];
                    let start_seq = if m.first_seq > 0 { m.first_seq - 1 } else { 0 };
                    (
                        m.id,
                        m.path.clone(),
                        m.len,
                        m.sealed || l.adopted,
                        start_seq,
                    )
                })
            };
            let Some((seg_id, path, end, sealed, start_seq)) = target else {
                return Ok(true);
            };
            if c.reader.as_ref().map(|(id, _)| *id) != Some(seg_id) {
                let file = self
                    .fs
                    .open(&path, false)
                    .map_err(|e| SpoolError::io(&path, e))?;
                let r = FrameReader::new(
                    file,
                    SEGMENT_HEADER_LEN,
                    end,
                    READ_CHUNK,
                    start_seq.min(c.handed),
                );
                c.reader = Some((seg_id, r));
            }
            let Some((_, reader)) = c.reader.as_mut() else {
                return Ok(false);
            };
            reader.set_end(end);
            match reader.next(true).map_err(|e| SpoolError::io(&path, e))? {
                Next::Frame(f) => {
                    if f.skipped.is_some() && f.seq > c.read_through {
                        batch.corrupt_skipped += 1;
                    }
                    c.read_through = c.read_through.max(f.seq);
                    if f.seq <= c.handed {
                        continue;
                    }
                    if let Some(limit) = expiry
                        && f.meta.created_at_unix_nanos < limit
                    {
                        batch.expired.add(1, f.len);
                        if c.handed == c.acked {
                            // Nothing outstanding before it: it counts as acknowledged.
                            c.acked = f.seq;
                            l.acked.store(f.seq, Ordering::Release);
                        }
                        c.handed = f.seq;
                        continue;
                    }
                    let Some(payload) = f.payload else { continue };
                    let size = payload.len() as u64;
                    if !batch.records.is_empty() && *bytes + size > max_bytes {
                        reader.unread_last();
                        return Ok(false);
                    }
                    *bytes += size;
                    c.handed = f.seq;
                    batch.records.push(Record {
                        id: RecordId {
                            lane: l.id,
                            seq: f.seq,
                        },
                        payload,
                    });
                }
                Next::End { valid_end, end } => {
                    if valid_end < end && sealed && seg_id > c.tail_damage_counted {
                        batch.corrupt_skipped += 1;
                        c.tail_damage_counted = seg_id;
                    }
                    if !sealed {
                        return Ok(false);
                    }
                    // Move to the next segment, if any.
                    let next = {
                        let segs = lock(&l.segs);
                        match segs.iter().position(|m| m.id == seg_id) {
                            Some(i) => segs.get(i + 1).cloned(),
                            None => segs
                                .iter()
                                .find(|m| m.last_seq > c.handed || !m.sealed)
                                .cloned(),
                        }
                    };
                    let Some(m) = next else {
                        return Ok(false);
                    };
                    let file = self
                        .fs
                        .open(&m.path, false)
                        .map_err(|e| SpoolError::io(&m.path, e))?;
                    let start = if m.first_seq > 0 { m.first_seq - 1 } else { 0 };
                    let r = FrameReader::new(
                        file,
                        SEGMENT_HEADER_LEN,
                        m.len,
                        READ_CHUNK,
                        start.min(c.handed),
                    );
                    c.reader = Some((m.id, r));
                }
            }
        }
    }

    /// Deletes sealed segments whose newest record is older than the age limit.
    fn expire_segments(
        &self,
        l: &Lane,
        c: &mut Consumer,
        limit_ns: u64,
        expired: &mut Dropped,
    ) -> io::Result<()> {
        let victims: Vec<SegMeta> = {
            let mut segs = lock(&l.segs);
            let (gone, kept): (Vec<SegMeta>, Vec<SegMeta>) = std::mem::take(&mut *segs)
                .into_iter()
                .partition(|m| (m.sealed || l.adopted) && m.records > 0 && m.newest_ns < limit_ns);
            *segs = kept;
            gone
        };
        for m in victims {
            self.drop_segment(l, c, m, DropCause::Expired, expired)?;
        }
        Ok(())
    }

    fn ack(&self, id: RecordId) -> Result<(), SpoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        let Some(l) = self.lane(id.lane) else {
            return Ok(());
        };
        let newest = l.last_seq.load(Ordering::Acquire);
        if id.seq > newest {
            return Err(SpoolError::UnknownRecord { id, newest });
        }
        let mut c = lock(&l.consumer);
        if id.seq <= c.acked {
            return Ok(());
        }
        c.acked = id.seq;
        c.handed = c.handed.max(id.seq);
        c.settle_limbo(id.seq);
        l.acked.store(id.seq, Ordering::Release);
        match l.write_cursor(&*self.fs, &mut c) {
            Ok(()) => {}
            Err(e) if e.is_disk_full() => {
                // A full disk must not lock the spool: free what is delivered first (its
                // deletion needs no space), then try the cursor again.
                self.free_delivered(&l, &mut c)?;
                l.write_cursor(&*self.fs, &mut c)?;
            }
            Err(e) => return Err(e),
        }
        self.delete_acked(&l, &mut c)?;
        let empty_adopted = l.adopted && lock(&l.segs).is_empty();
        drop(c);
        if empty_adopted {
            self.maybe_remove_lane(&l);
        }
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
    fn delete_acked(&self, l: &Lane, c: &mut Consumer) -> Result<bool, SpoolError> {
        let written = c.cursor.written().acked_through;
        let victims: Vec<SegMeta> = {
            let segs = lock(&l.segs);
            segs.iter()
                .filter(|m| (m.sealed || l.adopted) && m.unacked(written) == 0)
                .cloned()
                .collect()
        };
        if victims.is_empty() {
            return Ok(false);
        }
        let mut sink = Dropped::default();
        let mut doomed = Vec::with_capacity(victims.len());
        for m in victims {
            lock(&l.segs).retain(|s| s.id != m.id);
            if c.reader.as_ref().is_some_and(|(id, _)| *id == m.id) {
                c.reader = None;
            }
            self.forget_segment(l, &m, &mut sink);
            doomed.push(m.path);
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
    fn free_delivered(&self, l: &Lane, c: &mut Consumer) -> Result<(), SpoolError> {
        let victims: Vec<SegMeta> = {
            let mut segs = lock(&l.segs);
            let (gone, kept): (Vec<SegMeta>, Vec<SegMeta>) = std::mem::take(&mut *segs)
                .into_iter()
                .partition(|m| (m.sealed || l.adopted) && m.unacked(c.acked) == 0);
            *segs = kept;
            gone
        };
        let mut sink = Dropped::default();
        for m in victims {
            if c.reader.as_ref().is_some_and(|(id, _)| *id == m.id) {
                c.reader = None;
            }
            self.forget_segment(l, &m, &mut sink);
            match self.fs.remove_file(&m.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(&m.path, e)),
            }
        }
        self.delete_doomed()
    }

    /// Unlinks the segments queued by [`Inner::delete_acked`]. A failure is logged and
    /// returned; the file stays, fully acknowledged, and the next open deletes it.
    fn delete_doomed(&self) -> Result<(), SpoolError> {
        let _deleting = lock(&self.deleting);
        let doomed = std::mem::take(&mut *lock(&self.doomed));
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
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Removes an adopted lane with no segments left: its files, its directory, its lock.
    fn maybe_remove_lane(&self, l: &Arc<Lane>) {
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
            lane::LOCK_FILE,
        ] {
            let _ = self.fs.remove_file(&l.dir.join(name));
        }
        // Fails (and the directory stays) if files we do not own remain: fine.
        let _ = std::fs::remove_dir(&l.dir);
        drop(lock(&l.lock_file).take());
        tracing::info!(lane = l.id, "adopted lane drained and removed");
    }

    fn stats(&self) -> SpoolStats {
        let mut s = SpoolStats {
            bytes: self.total_bytes.load(Ordering::Acquire),
            max_total_bytes: self.cap,
            configured_max_total_bytes: self.config.max_total_bytes_value(),
            ..SpoolStats::default()
        };
        let lanes = self.lanes();
        s.lanes = lanes.len();
        let mut oldest = u64::MAX;
        for l in &lanes {
            let acked = l.acked.load(Ordering::Acquire);
            for m in lock(&l.segs).iter() {
                let n = m.unacked(acked);
                if n > 0 {
                    s.records += n;
                    let framed = m.len.saturating_sub(crate::format::SEGMENT_HEADER_LEN);
                    s.pending_bytes += if n >= m.records || m.records == 0 {
                        framed
                    } else {
                        // Records of one segment are of similar size in practice; an
                        // exact figure would need a per-record index, which the spool
                        // does not keep (memory must not grow with its size).
                        u64::try_from(u128::from(framed) * u128::from(n) / u128::from(m.records))
                            .unwrap_or(framed)
                    };
                    oldest = oldest.min(m.oldest_ns);
                }
            }
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
        s
    }
}
