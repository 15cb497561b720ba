//! The appender: the one writer of the own lane. It owns the active segment, rotation, the
//! cap and eviction, and the group commit of durable appends; it stands on the ledger.
//! The drainer asks it to seal a drained segment ([`Appender::seal_drained`]); nothing else
//! touches its state.

use std::io;
use std::sync::{Arc, Mutex};

use outlast_core::Payload;

use crate::commit::{Appending, GroupCommit};
use crate::config::{Durability, FullPolicy};
use crate::error::{AppendError, AppendErrorKind, SpoolError, is_disk_full};
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::fs::{SpoolFile, write_all_at};
use crate::index::SegMeta;
use crate::lane::DropCause;
use crate::ledger::{Ledger, Wake};
use crate::locks::lock;
use crate::recovery;
use crate::types::{Appended, Dropped, RecordId};

/// An own lane's active segment up to this size stays when the lane becomes empty (see
/// [`Appender::seal_drained`]).
pub(crate) const DRAINED_KEEP_BYTES: u64 = 16 * 1024;

/// With [`Durability::FsyncEveryAppend`], the active segment is written with zeros ahead of
/// its last record (never past the segment size): a record then lands on blocks the file
/// already holds, and the fdatasync that makes it durable writes data only, without a
/// journal commit for a new file size (about 0.65× the time on ext4 here; see row 2 in
/// docs/benchmarks.md). A fill reaches as far ahead as the segment holds records, at least
/// [`ZERO_FILL_MIN_BYTES`] and at most this: a segment sealed soon after it began (a lane
/// drained after a short outage) wrote few zeros, a long one fills 1 MiB at a time, and
/// one commit in many carries a new size. Recovery cuts zeros after the last record off as
/// unused room ([`crate::segfile::SegScan::spare_bytes`]); rotation and close cut them at
/// once.
pub(crate) const ZERO_FILL_BYTES: u64 = 1024 * 1024;

/// The least a zero fill reaches ahead (see [`ZERO_FILL_BYTES`]).
pub(crate) const ZERO_FILL_MIN_BYTES: u64 = 64 * 1024;

/// Zeros written by one `pwrite` of a fill.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

#[derive(Debug)]
struct ActiveSeg {
    id: u64,
    file: Arc<dyn SpoolFile>,
    /// Where the next record goes: the end of the last record.
    offset: u64,
    /// The file holds written bytes (records, then zeros) up to here; at least `offset`.
    filled: u64,
}

impl ActiveSeg {
    fn new(id: u64, file: Arc<dyn SpoolFile>, offset: u64) -> ActiveSeg {
        ActiveSeg {
            id,
            file,
            offset,
            filled: offset,
        }
    }

    /// Writes zeros after the room a frame of `frame_len` bytes needs, so that it and the
    /// next records land inside the file, if they do not yet (how far: [`ZERO_FILL_BYTES`]).
    /// A failure (a full disk) is not the record's: the zeros are cut off again and this
    /// segment is not filled any more; the record is written as without a fill.
    fn fill_ahead(&mut self, frame_len: u64, seg_bytes: u64) {
        let need = self.offset.saturating_add(frame_len);
        if need <= self.filled {
            return;
        }
        let ahead = need
            .saturating_sub(SEGMENT_HEADER_LEN)
            .clamp(ZERO_FILL_MIN_BYTES, ZERO_FILL_BYTES);
        let to = need.saturating_add(ahead).min(seg_bytes);
        if to <= need {
            // The record reaches the segment's end: nothing after it to fill.
            return;
        }
        let from = self.filled.max(self.offset);
        let mut at = from;
        while at < to {
            let n = usize::try_from(to - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            if let Err(e) = write_all_at(&*self.file, &ZEROS[..n], at) {
                tracing::debug!(segment = self.id, error = %e, "zero fill of the active segment failed");
                let _ = self.file.set_len(self.offset);
                self.filled = u64::MAX;
                return;
            }
            at += n as u64;
        }
        self.filled = to;
    }

    /// Cuts zeros written ahead of the last record off (best effort: recovery cuts what is
    /// left). Returns whether there were any.
    fn cut_fill(&mut self) -> bool {
        if self.filled == u64::MAX || self.filled <= self.offset {
            return false;
        }
        match self.file.set_len(self.offset) {
            Ok(()) => {
                self.filled = self.offset;
                true
            }
            Err(e) => {
                tracing::debug!(segment = self.id, error = %e, "cutting the zero fill off failed");
                false
            }
        }
    }
}

/// The writer's state, under `Appender::writer`.
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
    /// ([`Appender::sync_through`]) syncs them first.
    unsynced: Vec<Arc<dyn SpoolFile>>,
    /// A rotation created a segment file whose directory entry is not fsynced yet.
    dir_unsynced: bool,
    closed: bool,
    /// The own lane's identity and cursor are in place ([`Appender::own_cursor_ready`]
    /// succeeded); they stay so until close. Checked here, under the writer lock, so that
    /// an append does not take the lane's consumer lock, which a replay read holds while it
    /// reads from disk.
    lane_ready: bool,
}

impl Writer {
    /// Whether a frame of `frame_len` bytes needs a new segment (and its header).
    fn needs_new_segment(&self, frame_len: u64, seg_bytes: u64) -> bool {
        match &self.seg {
            None => true,
            Some(s) => self.needs_rotation || s.offset + frame_len > seg_bytes,
        }
    }
}

/// What one group commit syncs: the segments sealed since the last one, the active one,
/// and the lane directory if a rotation created a file in it.
struct CommitWork {
    sealed: Vec<Arc<dyn SpoolFile>>,
    active: Option<Arc<dyn SpoolFile>>,
    dir: bool,
}

/// The one appender of a spool.
#[derive(Debug)]
pub(crate) struct Appender {
    ledger: Arc<Ledger>,
    writer: Mutex<Writer>,
    commit: GroupCommit,
}

impl Appender {
    /// The appender of the own lane as recovery left it: it resumes the last segment if
    /// that is intact, has room and holds a record not yet acknowledged; otherwise the
    /// first append starts a new one (a fully acknowledged segment stays sealed, and the
    /// open deletes it).
    pub(crate) fn new(ledger: Arc<Ledger>, rec: &recovery::RecoveredLane) -> Appender {
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
        let own = ledger.own();
        let acked = rec.cursor.state.acked_through;
        let drained = rec
            .segs
            .last()
            .is_some_and(|m| m.records > 0 && m.unacked(acked) == 0);
        if let Some((id, len)) = rec.resumable
            && len < ledger.config().segment_bytes()
            && !drained
        {
            let path = own.dir().join(format::segment_file_name(id));
            if let Ok(file) = ledger.fs().open(&path, true) {
                writer.seg = Some(ActiveSeg::new(id, file, len));
                own.resume_tail();
            }
        }
        Appender {
            ledger,
            writer: Mutex::new(writer),
            commit: GroupCommit::default(),
        }
    }

    pub(crate) fn append(&self, payload: Payload) -> Result<Appended, AppendError> {
        let config = self.ledger.config();
        let max = config.max_record_bytes();
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
        // A durable append counts from here: a commit about to start waits for its record.
        let appending =
            (config.durability() == Durability::FsyncEveryAppend).then(|| self.commit.appending());
        let mut w = lock(&self.writer);
        if w.closed || self.ledger.is_closed() {
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
        let lsn = self.commit.written();
        drop(w);
        // The frame is written and indexed: whatever the fsync does, the record is in the
        // spool and will be read. A failed fsync is its own outcome, not a failed append
        // (handing the payload back would have it appended, or counted lost, twice).
        let sync_error = match appending {
            Some(a) => self.sync_through(lsn, Some(a)).err(),
            None => None,
        };
        self.report_lost_in_flight(&mut evicted);
        Ok(Appended {
            id: RecordId {
                lane: self.ledger.own().id(),
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
        let lost = self.ledger.take_lost_in_flight();
        // Already in the counters (since the rewind): reported here only.
        evicted.add(lost.records, lost.bytes);
    }

    /// Makes sure the own lane's cursor file is prepared (see [`CursorFile::prepare`]); a
    /// record is taken only then. Called with the writer lock held (lock order: writer,
    /// consumer).
    ///
    /// [`CursorFile::prepare`]: crate::cursor::CursorFile::prepare
    fn own_cursor_ready(&self) -> io::Result<()> {
        let own = self.ledger.own();
        let fs = self.ledger.fs();
        own.record_identity(fs, self.ledger.config().identity())?;
        own.consumer().prepare_cursor(fs)
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
        let max = self.ledger.config().max_record_bytes();
        if frame_len > max {
            return Err(AppendErrorKind::TooLarge {
                size: frame_len,
                max,
            });
        }
        let (evicted, freed) = self.make_room(w, frame_len)?;
        let mut written = self.write_frame(w, frame, seq);
        if freed && written.as_ref().is_err_and(is_disk_full) {
            // The segments evicted for this record are unlinked by the background thread;
            // on a full disk their room is needed now: unlinked here, and the write tried
            // once more (as if they had been unlinked inline).
            let _ = self.ledger.delete_doomed();
            written = self.write_frame(w, frame, seq);
        }
        let (seg_id, offset) = written.map_err(AppendErrorKind::Io)?;
        w.next_seq = seq + 1;
        self.ledger.add_bytes(frame_len);
        self.ledger
            .own()
            .note_appended(seg_id, offset, seq, payload.meta().created_at_unix_nanos);
        self.commit.wrote(frame_len);
        Ok(evicted)
    }

    /// Writes a built frame at the end of the active segment, starting a new segment if it
    /// needs one; returns the segment's id and its new length. Writer lock held.
    fn write_frame(&self, w: &mut Writer, frame: &[u8], seq: u64) -> io::Result<(u64, u64)> {
        let frame_len = frame.len() as u64;
        if w.needs_new_segment(frame_len, self.ledger.config().segment_bytes()) {
            self.rotate(w, seq)?;
        }
        let config = self.ledger.config();
        let Some(seg) = w.seg.as_mut() else {
            return Err(io::Error::other("no active segment"));
        };
        if config.durability() == Durability::FsyncEveryAppend {
            seg.fill_ahead(frame_len, config.segment_bytes());
        }
        if let Err(e) = write_all_at(&*seg.file, frame, seg.offset) {
            // Cut the partial frame off so the next append starts at a frame boundary; if
            // even that fails, the next append starts a new segment (recovery will skip or
            // truncate the partial bytes, and readers never read past `offset`).
            if seg.file.set_len(seg.offset).is_err() {
                w.needs_rotation = true;
            } else if seg.filled != u64::MAX {
                seg.filled = seg.offset;
            }
            return Err(e);
        }
        seg.offset += frame_len;
        Ok((seg.id, seg.offset))
    }

    /// Makes room under the cap for a frame of `frame_len` bytes (and a new segment's header
    /// if it needs one): refuses it (drop-newest), or evicts the oldest segments
    /// (drop-oldest) and returns what they held, and whether any segment was evicted (its
    /// file is unlinked by the background thread, see [`Ledger::drop_segment`]); writer
    /// lock held.
    fn make_room(
        &self,
        w: &mut Writer,
        frame_len: u64,
    ) -> Result<(Dropped, bool), AppendErrorKind> {
        let config = self.ledger.config();
        let seg_bytes = config.segment_bytes();
        let mut evicted = Dropped::default();
        let mut freed = false;
        // A cap lowered by a full disk is measured again (rate-limited) before anything is
        // refused or evicted for it: the space may have come back.
        let mut measured = false;
        loop {
            let cap = self.ledger.cap();
            let extra = if w.needs_new_segment(frame_len, seg_bytes) {
                SEGMENT_HEADER_LEN
            } else {
                0
            };
            let total = self.ledger.total_bytes();
            if total + frame_len + extra <= cap {
                break;
            }
            if !measured {
                measured = true;
                if self.ledger.remeasure_cap(true) {
                    continue;
                }
            }
            let full = AppendErrorKind::Full {
                spool_max_bytes: cap,
            };
            match config.full_policy() {
                FullPolicy::DropNewest => return Err(full),
                FullPolicy::DropOldest => {
                    if !self
                        .evict_oldest(w, &mut evicted)
                        .map_err(AppendErrorKind::Io)?
                    {
                        return Err(full);
                    }
                    freed = true;
                }
            }
        }
        if evicted.records > 0 {
            self.ledger.count_dropped(evicted, Dropped::default(), 0);
            tracing::warn!(
                records = evicted.records,
                bytes = evicted.bytes,
                "spool full: oldest records evicted"
            );
        }
        Ok((evicted, freed))
    }

    /// Seals the active segment and starts a new one; writer lock held.
    ///
    /// With the background thread running, the sealed segment's fdatasync, the new header's
    /// and the directory entry's are left to it: it is woken at once and syncs them through
    /// the group commit, which any [`Spool::sync`] or durable append also goes through, so
    /// no promise depends on who gets there first. Without the thread, they are done here
    /// (if the thread exists but cannot be woken, the spool is closing: close syncs them).
    ///
    /// [`Spool::sync`]: crate::Spool::sync
    fn rotate(&self, w: &mut Writer, first_seq: u64) -> io::Result<()> {
        let background = self.ledger.has_background();
        let own = self.ledger.own();
        let fs = self.ledger.fs();
        if let Some(mut old) = w.seg.take() {
            // Its zeros after the last record go; the fdatasync below (or the background
            // thread's) makes the new length durable with the records.
            old.cut_fill();
            if background {
                w.unsynced.push(Arc::clone(&old.file));
            } else if let Err(e) = old.file.sync_data() {
                w.seg = Some(old);
                return Err(e);
            }
            own.seal_segment(old.id, old.offset);
        }
        let id = w.next_seg_id;
        let path = own.dir().join(format::segment_file_name(id));
        let file = fs.create_new(&path)?;
        let header = format::encode_segment_header(id, first_seq);
        let setup = write_all_at(&*file, &header, 0).and_then(|()| {
            if background {
                Ok(())
            } else {
                file.sync_data().and_then(|()| fs.sync_dir(own.dir()))
            }
        });
        if let Err(e) = setup {
            // A stub without a full header holds nothing; recovery would remove it.
            let _ = fs.remove_file(&path);
            w.next_seg_id += 1;
            return Err(e);
        }
        w.next_seg_id += 1;
        w.needs_rotation = false;
        w.dir_unsynced |= background;
        w.seg = Some(ActiveSeg::new(id, file, SEGMENT_HEADER_LEN));
        self.ledger.add_bytes(SEGMENT_HEADER_LEN);
        own.push_segment(SegMeta::new(id, path, SEGMENT_HEADER_LEN));
        // Rotation is a durability point for the read progress too (nothing to do if no ack
        // came since the last fdatasync). A failure is retried by the next interval, sync or
        // close, which report it; the append itself is unharmed.
        let woken = background && self.ledger.wake(Wake::Rotated);
        if !woken && let Err(e) = own.sync_cursor(fs) {
            tracing::warn!(lane = own.id(), error = %e, "cursor fsync on rotation failed");
        }
        Ok(())
    }

    /// The drainer's request once the own lane became empty (every record stored is
    /// acknowledged): seals the active segment if it holds more than
    /// [`DRAINED_KEEP_BYTES`], so that the deletion of acknowledged segments takes it too;
    /// the next append starts a fresh segment. A smaller one is kept and appended to, so
    /// that a trickle of records (each delivered before the next comes) does not create and
    /// delete a file per record.
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
        let own = self.ledger.own();
        let mut c = own.consumer();
        if c.acked() < own.last_seq() {
            return Ok(());
        }
        let Some(old) = w.seg.take() else {
            return Ok(());
        };
        own.seal_segment(old.id, old.offset);
        // Its bytes are all delivered: the group commit need not sync them, but a durable
        // appender may still wait for them, so they stay in its reach.
        w.unsynced.push(old.file);
        drop(w);
        self.ledger.delete_acked(own, &mut c)?;
        Ok(())
    }

    /// Deletes the oldest whole segment (adopted lanes first); writer lock held. Returns
    /// whether anything was freed. Records of it no one has read count in `evicted`; those
    /// handed out and not yet acknowledged are counted once their fate is known (see
    /// [`Consumer::drop_counts`]).
    ///
    /// [`Consumer::drop_counts`]: crate::lane::Consumer::drop_counts
    fn evict_oldest(&self, w: &mut Writer, evicted: &mut Dropped) -> io::Result<bool> {
        for l in &self.ledger.adopted() {
            let mut c = l.consumer();
            if let Some(m) = l.take_oldest(None) {
                self.ledger
                    .drop_segment(l, &mut c, m, DropCause::Evicted, evicted)?;
                return Ok(true);
            }
        }
        let own = self.ledger.own();
        let active = w.seg.as_ref().map(|s| s.id);
        {
            let mut c = own.consumer();
            if let Some(m) = own.take_oldest(active) {
                self.ledger
                    .drop_segment(own, &mut c, m, DropCause::Evicted, evicted)?;
                return Ok(true);
            }
        }
        // Only the active segment is left: seal it so it can go.
        if own.tail_has_records() {
            let next = w.next_seq;
            self.rotate(w, next)?;
            return self.evict_oldest(w, evicted);
        }
        Ok(false)
    }

    /// Group commit (see [`GroupCommit::sync_through`]): returns once everything up to
    /// `lsn` is fsynced (`appending`: the caller's own durable append, if it is one). The
    /// committer fdatasyncs the segments sealed since the last commit, then the active
    /// one, then the lane directory if a rotation created a file in it.
    fn sync_through(&self, lsn: u64, appending: Option<Appending<'_>>) -> io::Result<()> {
        let fs = self.ledger.fs();
        let dir = self.ledger.own().dir();
        self.commit.sync_through(
            lsn,
            appending,
            || {
                // Every byte written and not yet durable is in `unsynced` or the active
                // segment.
                let mut w = lock(&self.writer);
                let work = CommitWork {
                    sealed: std::mem::take(&mut w.unsynced),
                    active: w.seg.as_ref().map(|s| Arc::clone(&s.file)),
                    dir: std::mem::take(&mut w.dir_unsynced),
                };
                (self.commit.written(), work)
            },
            |work| {
                work.sealed
                    .iter()
                    .chain(work.active.as_ref())
                    .try_for_each(|f| f.sync_data())
                    .and_then(|()| if work.dir { fs.sync_dir(dir) } else { Ok(()) })
            },
            |work| {
                // Hand the work back to the next commit, ahead of anything sealed since.
                let mut w = lock(&self.writer);
                let newer = std::mem::replace(&mut w.unsynced, work.sealed);
                w.unsynced.extend(newer);
                w.dir_unsynced |= work.dir;
            },
        )
    }

    /// Fdatasyncs everything written so far (one group commit).
    pub(crate) fn sync_data(&self) -> Result<(), SpoolError> {
        self.sync_through(self.commit.written(), None)
            .map_err(|e| SpoolError::io(self.ledger.own().dir(), e))
    }

    /// Fdatasyncs what was written since the last commit, if anything was.
    pub(crate) fn sync_if_behind(&self) -> Result<(), SpoolError> {
        if self.commit.behind() {
            self.sync_data()
        } else {
            Ok(())
        }
    }

    /// Takes no record any more and lets the active segment go (close), its zero fill cut
    /// off and that made durable (best effort: recovery cuts what is left).
    pub(crate) fn close(&self) {
        let mut w = lock(&self.writer);
        w.closed = true;
        if let Some(mut seg) = w.seg.take()
            && seg.cut_fill()
            && let Err(e) = seg.file.sync_data()
        {
            tracing::debug!(segment = seg.id, error = %e, "fdatasync after cutting the zero fill off failed");
        }
    }

    /// The ledger this appender stands on.
    pub(crate) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }
}
