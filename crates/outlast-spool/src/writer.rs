//! The writer: appends to the own lane, rotation, the cap and eviction, and group commit
//! (one fdatasync shared by concurrent durable appenders).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use outlast_core::Payload;

use crate::background::Wake;
use crate::config::{Durability, FullPolicy, SpoolConfig};
use crate::error::{AppendError, AppendErrorKind, SpoolError};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::fs::{SpoolFile, SpoolFs, write_all_at};
use crate::identity;
use crate::index::SegMeta;
use crate::lane::{DropCause, Lane};
use crate::ledger::{Ledger, later, lock};
use crate::recovery;
use crate::types::{Appended, Dropped, RecordId};

/// An own lane's active segment up to this size stays when the lane becomes empty (see
/// [`Ledger::seal_drained`]).
pub(crate) const DRAINED_KEEP_BYTES: u64 = 16 * 1024;

/// Longest a group commit waits for the callers of the previous one to join it.
pub(crate) const MAX_GATHER: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub(crate) struct ActiveSeg {
    pub(crate) id: u64,
    pub(crate) file: Arc<dyn SpoolFile>,
    pub(crate) offset: u64,
}

#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) seg: Option<ActiveSeg>,
    pub(crate) next_seg_id: u64,
    pub(crate) next_seq: u64,
    pub(crate) buf: Vec<u8>,
    /// The active segment may hold a partial frame past `offset`: start a new one.
    pub(crate) needs_rotation: bool,
    /// Segments sealed by a rotation whose data may not be fdatasynced yet, oldest first.
    /// Rotation leaves their fdatasync to the background thread (woken at once) so that the
    /// appender does not wait for a segment's worth of writeback; any group commit
    /// ([`Ledger::sync_through`]) syncs them first.
    pub(crate) unsynced: Vec<Arc<dyn SpoolFile>>,
    /// A rotation created a segment file whose directory entry is not fsynced yet.
    pub(crate) dir_unsynced: bool,
    pub(crate) closed: bool,
    /// The own lane's identity and cursor are in place ([`Ledger::own_cursor_ready`]
    /// succeeded); they stay so until close. Checked here, under the writer lock, so that
    /// an append does not take the lane's consumer lock, which a replay read holds while it
    /// reads from disk.
    pub(crate) lane_ready: bool,
}

impl Writer {
    /// Whether a frame of `frame_len` bytes needs a new segment (and its header).
    fn needs_new_segment(&self, frame_len: u64, seg_bytes: u64) -> bool {
        match &self.seg {
            None => true,
            Some(s) => self.needs_rotation || s.offset + frame_len > seg_bytes,
        }
    }

    /// The writer of the own lane as recovery left it: it resumes the last segment if that
    /// is intact, has room and holds a record not yet acknowledged; otherwise the first
    /// append starts a new one (a fully acknowledged segment stays sealed, and the open
    /// deletes it).
    pub(crate) fn resume(
        fs: &dyn SpoolFs,
        config: &SpoolConfig,
        own: &Lane,
        rec: &recovery::RecoveredLane,
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
            lane_ready: false,
        };
        let acked = rec.cursor.state.acked_through;
        let drained = rec
            .segs
            .last()
            .is_some_and(|m| m.records > 0 && m.unacked(acked) == 0);
        if let Some((id, len)) = rec.resumable
            && len < config.segment_bytes()
            && !drained
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
pub(crate) fn record_identity(fs: &dyn SpoolFs, own: &Lane, mine: Option<&str>) -> io::Result<()> {
    if !own.identity_pending.load(Ordering::Acquire) {
        return Ok(());
    }
    identity::write_identity(fs, &own.dir, mine)?;
    own.identity_pending.store(false, Ordering::Release);
    Ok(())
}

/// Group commit bookkeeping, under `Ledger::sync`.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// Everything the writer wrote up to this LSN is fdatasynced.
    pub(crate) synced_lsn: u64,
    /// A caller is running a commit (the others wait on `Ledger::sync_cv`).
    pub(crate) in_progress: bool,
    /// The LSN each caller inside `sync_through` waits for (one entry per caller).
    pub(crate) waiting: Vec<u64>,
    /// Callers the last commit satisfied, and how long it took: the next commit waits
    /// briefly for that many callers before it starts (see `Ledger::gather`).
    pub(crate) last_group: usize,
    pub(crate) last_commit: Duration,
}

impl SyncState {
    /// Callers still waiting for a commit (not yet satisfied by the last one).
    pub(crate) fn unsatisfied(&self) -> usize {
        self.waiting
            .iter()
            .filter(|&&l| l > self.synced_lsn)
            .count()
    }
}

impl Ledger {
    pub(crate) fn append(&self, payload: Payload) -> Result<Appended, AppendError> {
        let max = self.config.max_record_bytes();
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
        if !w.lane_ready {
            if let Err(e) = self.own_cursor_ready() {
                return Err(AppendError::new(AppendErrorKind::Io(e), payload));
            }
            w.lane_ready = true;
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
        let mut evicted = match result {
            Ok(evicted) => evicted,
            Err(kind) => return Err(AppendError::new(kind, payload)),
        };
        let lsn = self.written_lsn.load(Ordering::Acquire);
        drop(w);
        // The frame is written and indexed: whatever the fsync does, the record is in the
        // spool and will be read. A failed fsync is its own outcome, not a failed append
        // (handing the payload back would have it appended, or counted lost, twice).
        let sync_error = if self.config.durability() == Durability::FsyncEveryAppend {
            self.sync_through(lsn).err()
        } else {
            None
        };
        self.report_lost_in_flight(&mut evicted);
        Ok(Appended {
            id: RecordId {
                lane: self.own.id,
                seq,
            },
            sync_error,
            evicted,
        })
    }

    /// Adds to an append's `evicted` the records a rewind found lost to eviction while in
    /// flight, if no read reported them yet: a caller counting evictions from appends alone
    /// counts them too (the next read would otherwise, in `ReadBatch::evicted`).
    fn report_lost_in_flight(&self, evicted: &mut Dropped) {
        if !self.lost_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut lost = Dropped::default();
        for l in self.lanes() {
            let d = std::mem::take(&mut lock(&l.consumer).lost.evicted);
            lost.add(d.records, d.bytes);
        }
        // Already in the counters (since the rewind): reported here only.
        evicted.add(lost.records, lost.bytes);
    }

    /// Makes sure the own lane's cursor file is prepared (see [`CursorFile::prepare`]); a
    /// record is taken only then. Called with the writer lock held (lock order: writer,
    /// consumer).
    pub(crate) fn own_cursor_ready(&self) -> io::Result<()> {
        record_identity(&*self.fs, &self.own, self.config.identity())?;
        let mut c = lock(&self.own.consumer);
        if c.cursor.is_ready() {
            return Ok(());
        }
        c.cursor.prepare(&*self.fs)
    }

    /// Writes a built frame; called with the writer lock held.
    pub(crate) fn append_frame(
        &self,
        w: &mut Writer,
        frame: &[u8],
        seq: u64,
        payload: &Payload,
    ) -> Result<Dropped, AppendErrorKind> {
        let frame_len = frame.len() as u64;
        let max = self.config.max_record_bytes();
        if frame_len > max {
            return Err(AppendErrorKind::TooLarge {
                size: frame_len,
                max,
            });
        }
        let evicted = self.make_room(w, frame_len)?;
        if w.needs_new_segment(frame_len, self.config.segment_bytes()) {
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

    /// Makes room under the cap for a frame of `frame_len` bytes (and a new segment's header
    /// if it needs one): refuses it (drop-newest), or evicts the oldest segments
    /// (drop-oldest) and returns what they held; writer lock held.
    fn make_room(&self, w: &mut Writer, frame_len: u64) -> Result<Dropped, AppendErrorKind> {
        let seg_bytes = self.config.segment_bytes();
        let mut evicted = Dropped::default();
        // A cap lowered by a full disk is measured again (rate-limited) before anything is
        // refused or evicted for it: the space may have come back.
        let mut measured = false;
        loop {
            let cap = self.cap.load(Ordering::Acquire);
            let extra = if w.needs_new_segment(frame_len, seg_bytes) {
                SEGMENT_HEADER_LEN
            } else {
                0
            };
            let total = self.total_bytes.load(Ordering::Acquire);
            if total + frame_len + extra <= cap {
                break;
            }
            if !measured {
                measured = true;
                if self.remeasure_cap(true) {
                    continue;
                }
            }
            let full = AppendErrorKind::Full {
                spool_max_bytes: cap,
            };
            match self.config.full_policy() {
                FullPolicy::DropNewest => return Err(full),
                FullPolicy::DropOldest => {
                    if !self
                        .evict_oldest(w, &mut evicted)
                        .map_err(AppendErrorKind::Io)?
                    {
                        return Err(full);
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
        Ok(evicted)
    }

    /// Seals the active segment and starts a new one; writer lock held.
    ///
    /// With the background thread running, the sealed segment's fdatasync, the new header's
    /// and the directory entry's are left to it: it is woken at once and syncs them through
    /// the group commit, which any [`Spool::sync`] or durable append also goes through, so
    /// no promise depends on who gets there first. Without the thread, they are done here
    /// (if the thread exists but cannot be woken, the spool is closing: close syncs them).
    pub(crate) fn rotate(&self, w: &mut Writer, first_seq: u64) -> io::Result<()> {
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

    /// The own lane became empty (every record stored is acknowledged): seals its active
    /// segment if it holds more than [`DRAINED_KEEP_BYTES`], so that the deletion of
    /// acknowledged segments takes it too; the next append starts a fresh segment. A
    /// smaller one is kept and appended to, so that a trickle of records (each delivered
    /// before the next comes) does not create and delete a file per record.
    ///
    /// Safe at any point of a crash: only the in-memory state changes here; the file goes
    /// through [`Ledger::delete_acked`], which deletes only what the cursor as written
    /// covers. Sequence numbers go on from the writer's (the cursor's `next_seq`, and its
    /// `acked_through`, cover the numbers of the deleted segment after a restart).
    pub(crate) fn seal_drained(&self) -> Result<(), SpoolError> {
        let mut w = lock(&self.writer);
        let Some(seg) = w.seg.as_ref() else {
            return Ok(());
        };
        if seg.offset <= DRAINED_KEEP_BYTES || w.closed {
            return Ok(());
        }
        let mut c = lock(&self.own.consumer);
        let last = self.own.last_seq.load(Ordering::Acquire);
        if c.acked < last {
            return Ok(());
        }
        let Some(old) = w.seg.take() else {
            return Ok(());
        };
        {
            let mut segs = lock(&self.own.segs);
            if let Some(m) = segs.iter_mut().find(|m| m.id == old.id) {
                m.sealed = true;
                m.len = old.offset;
            }
        }
        // Its bytes are all delivered: the group commit need not sync them, but a durable
        // appender may still wait for them, so they stay in its reach.
        w.unsynced.push(old.file);
        drop(w);
        self.delete_acked(&self.own, &mut c)?;
        Ok(())
    }

    /// Deletes the oldest whole segment (adopted lanes first); writer lock held. Returns
    /// whether anything was freed. Records of it no one has read count in `evicted`; those
    /// handed out and not yet acknowledged are counted once their fate is known (see
    /// [`Consumer::drop_counts`]).
    pub(crate) fn evict_oldest(&self, w: &mut Writer, evicted: &mut Dropped) -> io::Result<bool> {
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

    /// Group commit: returns once everything up to `lsn` is fsynced, sharing one fsync among
    /// concurrent callers (one becomes the committer, the others wait for it). The committer
    /// fdatasyncs the segments sealed since the last commit, then the active one, then the
    /// lane directory if a rotation created a file in it.
    // Longer than most: the committer's hand-off (take the work under the writer lock, sync
    // without it, give it back on failure, wake the waiters) reads best in one place.
    pub(crate) fn sync_through(&self, lsn: u64) -> io::Result<()> {
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
    pub(crate) fn gather<'a>(
        &self,
        mut st: MutexGuard<'a, SyncState>,
    ) -> MutexGuard<'a, SyncState> {
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

    pub(crate) fn sync_data(&self) -> Result<(), SpoolError> {
        let lsn = self.written_lsn.load(Ordering::Acquire);
        self.sync_through(lsn)
            .map_err(|e| SpoolError::io(&self.own.dir, e))
    }
}
