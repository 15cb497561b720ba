//! A lane held by this process (its own, or an adopted one): its segment index, its reader
//! state and cursor, and the bookkeeping that counts each dropped record once.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::cursor::CursorFile;
use crate::error::SpoolError;
use crate::format::CursorState;
use crate::fs::SpoolFs;
use crate::identity;
use crate::index::SegMeta;
use crate::locks::lock;
use crate::recovery;
use crate::scan::{FrameReader, Next, PayloadArena};
use crate::seqset::SeqSet;
use crate::types::Dropped;

/// One lane held by this process: its own, or an adopted one.
///
/// Its fields are private: this file is the one that writes a lane. The appender changes
/// the own lane's tail ([`Lane::resume_tail`], [`Lane::note_appended`],
/// [`Lane::seal_segment`], [`Lane::push_segment`]) and evicts ([`Lane::take_oldest`]);
/// the drainer reads and acknowledges through the consumer ([`Lane::consumer`],
/// [`Lane::acknowledge`], [`Lane::rewind`], [`Lane::expire_record`],
/// [`Lane::count_lost`]) and expires ([`Lane::take_expired`]); the ledger takes out what
/// may be deleted ([`Lane::take_doomed`]) and lets a lane go ([`Lane::release_lock`]).
///
/// Lock order: the appender's writer, `cursor_sync`, `consumer`, `segs`. The methods that
/// take `segs` say so; they are called with the consumer guard held, or with no lock.
#[derive(Debug)]
pub(crate) struct Lane {
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
    /// Records of `consumer.counted` (readable without the consumer lock, for stats).
    counted_ahead: AtomicU64,
    /// Records of `consumer.limbo`: handed out, their segment dropped since, their fate not
    /// known yet (readable without the consumer lock, for stats).
    in_limbo: AtomicU64,
    /// Newest sequence number stored in the lane (0: none).
    last_seq: AtomicU64,
    /// Next sequence number (own lane: the writer's; adopted: recovered).
    next_seq: AtomicU64,
    /// The own lane has no identity file yet: one is written before its first record.
    identity_pending: AtomicBool,
}

/// A lane's read state, under [`Lane::consumer`]: the drainer's read position and ack
/// point, and what was counted dropped. Its fields are private; the drainer and the ledger
/// change it through the methods below.
#[derive(Debug)]
pub(crate) struct Consumer {
    acked: u64,
    /// The lane's cursor file; every change of `acked` is written to it.
    cursor: CursorFile,
    /// Records up to this seq were handed out (or skipped) since the last rewind.
    handed: u64,
    /// Records above the ack point, still in the segment index, that a read counted as
    /// dropped already: lost to damage found after open (an expired record is counted
    /// only where the ack point can pass it: see [`Lane::expire_record`]). Not reset by a
    /// rewind, so that a record read again is not counted again; not counted as waiting
    /// either (see [`Lane::counted_ahead`]).
    counted: SeqSet,
    reader: Option<(u64, FrameReader)>,
    /// Records handed out and not yet acknowledged whose segment was evicted or expired
    /// meanwhile: an ack counts them delivered; a rewind counts them lost (in `lost`).
    limbo: Vec<Limbo>,
    /// Records of `limbo` found lost by a rewind, reported by the next read of the lane.
    lost: Lost,
}

/// What a lane holds that waits for delivery (see [`Lane::waiting`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiting {
    /// Records not acknowledged and not counted dropped, with those in limbo.
    pub(crate) records: u64,
    /// Framed bytes of the records not acknowledged.
    pub(crate) bytes: u64,
    /// Creation time of the oldest record of a segment with records waiting
    /// (`u64::MAX`: none).
    pub(crate) oldest_ns: u64,
}

/// Why a segment was dropped with records in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropCause {
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

/// Lost records waiting to be reported by the next read (all of them already in the
/// spool's counters).
#[derive(Debug, Default)]
struct Lost {
    evicted: Dropped,
    expired: Dropped,
    /// Records already in the spool's counters (lost to damage, or missing, found by
    /// recovery) that no reader was told of yet: the next read reports them in
    /// `ReadBatch::corrupt_skipped`, so a caller counting its drops from reads counts them.
    unreported: u64,
}

impl Consumer {
    /// Counts the records `from..=to` as dropped, those not counted before and not in
    /// `absent` (numbers recovery found missing and counted); returns how many.
    fn count_new(&mut self, from: u64, to: u64, absent: &SeqSet) -> u64 {
        self.counted
            .insert_new(from.max(self.acked + 1), to, absent)
    }

    /// The ack point moved: what is at or below it is never read again.
    fn forget_below_ack(&mut self) {
        self.counted.remove_through(self.acked);
    }

    /// Splits a segment being dropped (evicted or expired) into the records no one has seen,
    /// counted into `now`, and those handed out and not acknowledged, kept in limbo until an
    /// ack (delivered) or a rewind (lost) says what became of them. Each record is counted
    /// once: delivered or dropped, never both.
    pub(crate) fn drop_counts(&mut self, m: &SegMeta, cause: DropCause, now: &mut Dropped) {
        let per = |n: u64| m.framed_bytes_of(n);
        // Records a read counted already (lost to damage) are neither unread nor in
        // flight: they are forgotten with their segment.
        let unread = m.unacked(self.handed).saturating_sub(
            self.counted
                .count_in(m.first_seq.max(self.handed.saturating_add(1)), m.last_seq),
        );
        let from = m.first_seq.max(self.acked.saturating_add(1));
        let to = m.last_seq.min(self.handed);
        let in_flight = m
            .unacked(self.acked)
            .saturating_sub(m.unacked(self.handed))
            .saturating_sub(self.counted.count_in(from, to));
        self.counted.remove(m.first_seq, m.last_seq);
        now.add(unread, per(unread));
        if in_flight > 0 {
            self.limbo.push(Limbo {
                from,
                to,
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
                x.bytes = crate::index::proportional(x.bytes, left, x.records);
                x.records = left;
                x.from = seq + 1;
            }
            true
        });
    }

    /// A rewind: what is in limbo was not delivered and is gone from disk: lost. Returns
    /// what it found lost (evicted, expired), for the spool's counters at once; the next
    /// read (or append, for evictions) reports it.
    pub(crate) fn rewind(&mut self) -> (Dropped, Dropped) {
        let (mut evicted, mut expired) = (Dropped::default(), Dropped::default());
        for x in std::mem::take(&mut self.limbo) {
            match x.cause {
                DropCause::Evicted => evicted.add(x.records, x.bytes),
                DropCause::Expired => expired.add(x.records, x.bytes),
            }
        }
        self.lost.evicted.add(evicted.records, evicted.bytes);
        self.lost.expired.add(expired.records, expired.bytes);
        self.handed = self.acked;
        self.reader = None;
        (evicted, expired)
    }

    /// The ack point.
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Records up to this seq were handed out (or skipped) since the last rewind.
    pub(crate) fn handed(&self) -> u64 {
        self.handed
    }

    /// The ack point as last written to the cursor file (what deletions may rely on).
    pub(crate) fn written_ack(&self) -> u64 {
        self.cursor.written().acked_through
    }

    /// Prepares the lane's cursor file (see [`CursorFile::prepare`]); nothing to do once
    /// it is.
    pub(crate) fn prepare_cursor(&mut self, fs: &dyn SpoolFs) -> io::Result<()> {
        self.cursor.prepare(fs)
    }

    /// Lets the cursor file go (the lane is removed).
    pub(crate) fn close_cursor(&mut self) {
        self.cursor.close();
    }

    /// Lets the segment reader and the cursor file go (close).
    pub(crate) fn close(&mut self) {
        self.reader = None;
        self.cursor.close();
    }

    /// The segment the reader is in, if one is open.
    pub(crate) fn reading(&self) -> Option<u64> {
        self.reader.as_ref().map(|(id, _)| *id)
    }

    /// Starts reading segment `id` with `reader`.
    pub(crate) fn start_reading(&mut self, id: u64, reader: FrameReader) {
        self.reader = Some((id, reader));
    }

    /// The next frame of the open segment, read up to `end` (`None`: no segment is open).
    pub(crate) fn next_frame(
        &mut self,
        end: u64,
        arena: &mut PayloadArena,
    ) -> Option<io::Result<Next>> {
        let (_, reader) = self.reader.as_mut()?;
        reader.set_end(end);
        Some(reader.next(Some(arena)))
    }

    /// Puts the frame just read back (the batch has no room for it).
    pub(crate) fn unread_last(&mut self) {
        if let Some((_, reader)) = self.reader.as_mut() {
            reader.unread_last();
        }
    }

    /// The sequence number of the last frame the open segment's reader read.
    pub(crate) fn reader_last_seq(&self) -> Option<u64> {
        self.reader.as_ref().map(|(_, r)| r.last_seq())
    }

    /// Record `seq` was handed out (added to a batch).
    pub(crate) fn hand_out(&mut self, seq: u64) {
        self.handed = seq;
    }

    /// A read failed part-way: the records from `first` on are handed out again by the next
    /// read.
    pub(crate) fn hand_out_again_from(&mut self, first: u64) {
        self.handed = self.handed.min(first.saturating_sub(1)).max(self.acked);
        self.reader = None;
    }

    /// Takes the losses found at recovery (or kept from a failed read), for a read to
    /// report.
    pub(crate) fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.lost.unreported)
    }

    /// Records already counted (lost to damage, found missing) that the next read reports.
    pub(crate) fn report_later(&mut self, records: u64) {
        self.lost.unreported += records;
    }

    /// Takes the records found lost (evicted, expired) and not reported yet, for a read to
    /// report.
    pub(crate) fn take_lost(&mut self) -> (Dropped, Dropped) {
        (
            std::mem::take(&mut self.lost.evicted),
            std::mem::take(&mut self.lost.expired),
        )
    }

    /// Takes the records found lost to eviction and not reported yet, for an append to
    /// report.
    pub(crate) fn take_lost_evicted(&mut self) -> Dropped {
        std::mem::take(&mut self.lost.evicted)
    }

    /// Whether records found lost to eviction wait to be reported.
    pub(crate) fn has_lost_evicted(&self) -> bool {
        self.lost.evicted.records > 0
    }

    /// Losses a failed read counted and could not report: the next read reports them.
    pub(crate) fn keep_lost(&mut self, evicted: Dropped, expired: Dropped) {
        self.lost.expired.add(expired.records, expired.bytes);
        self.lost.evicted.add(evicted.records, evicted.bytes);
    }
}

impl Lane {
    pub(crate) fn new(
        id: u32,
        dir: PathBuf,
        adopted: bool,
        file: File,
        rec: &recovery::RecoveredLane,
    ) -> Lane {
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
                counted: SeqSet::default(),
                reader: None,
                limbo: Vec::new(),
                // Records found missing at recovery are told to the first reader; damage
                // found at open is in the open's report (see `Lost::unreported`).
                lost: Lost {
                    unreported: rec.missing,
                    ..Lost::default()
                },
            }),
            cursor_sync: Mutex::new(()),
            acked: AtomicU64::new(acked),
            counted_ahead: AtomicU64::new(0),
            in_limbo: AtomicU64::new(0),
            last_seq: AtomicU64::new(last),
            next_seq: AtomicU64::new(rec.next_seq),
            identity_pending: AtomicBool::new(false),
        }
    }

    /// The lane's number.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The lane's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the lane was adopted (not this process's own).
    pub(crate) fn is_adopted(&self) -> bool {
        self.adopted
    }

    /// The newest sequence number stored in the lane (0: none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// The lane's read state. Lock order: the writer and `cursor_sync` before it, the
    /// segment index after it.
    pub(crate) fn consumer(&self) -> MutexGuard<'_, Consumer> {
        lock(&self.consumer)
    }

    /// Reads the segment index (oldest first) under its lock.
    pub(crate) fn with_segments<R>(&self, f: impl FnOnce(&[SegMeta]) -> R) -> R {
        f(&lock(&self.segs))
    }

    /// Bytes of the lane's segments.
    pub(crate) fn held_bytes(&self) -> u64 {
        lock(&self.segs).iter().map(|s| s.len).sum()
    }

    /// Whether the lane has no segment left.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.segs).is_empty()
    }

    /// What waits for delivery in the lane (for stats; no consumer lock).
    pub(crate) fn waiting(&self) -> Waiting {
        let acked = self.acked.load(Ordering::Acquire);
        let mut w = Waiting {
            records: 0,
            bytes: 0,
            oldest_ns: u64::MAX,
        };
        for m in lock(&self.segs).iter() {
            let n = m.unacked(acked);
            if n > 0 {
                w.records += n;
                w.bytes += m.framed_bytes_of(n);
                w.oldest_ns = w.oldest_ns.min(m.oldest_ns);
            }
        }
        // Records a read counted as dropped already (lost to damage ahead of the ack
        // point) are still indexed, but wait no more.
        w.records = w
            .records
            .saturating_sub(self.counted_ahead.load(Ordering::Acquire));
        // Records handed out whose segment was evicted or expired meanwhile are still
        // waiting for their fate (an ack: delivered; a rewind: lost, counted then).
        w.records += self.in_limbo.load(Ordering::Acquire);
        w
    }

    /// At open: whether the own lane has no identity file yet (one is then written before
    /// its first record, see [`Lane::record_identity`]).
    pub(crate) fn note_identity_absent(&self, absent: bool) {
        self.identity_pending.store(absent, Ordering::Release);
    }

    /// The appender resumes the last segment (recovery found it intact, with room): it is
    /// not sealed. Takes the segment index lock.
    pub(crate) fn resume_tail(&self) {
        if let Some(m) = lock(&self.segs).last_mut() {
            m.sealed = false;
        }
    }

    /// The appender wrote record `seq` (created at `created_ns`) into segment `seg_id`,
    /// which is now `len` bytes long. Takes the segment index lock.
    pub(crate) fn note_appended(&self, seg_id: u64, len: u64, seq: u64, created_ns: u64) {
        self.next_seq.store(seq + 1, Ordering::Release);
        self.last_seq.store(seq, Ordering::Release);
        let mut segs = lock(&self.segs);
        if let Some(m) = segs.iter_mut().rev().find(|m| m.id == seg_id) {
            m.len = len;
            m.note_record(seq, created_ns);
        }
    }

    /// The appender sealed segment `id` at `len` bytes (a rotation, or a drained segment
    /// let go). Takes the segment index lock.
    pub(crate) fn seal_segment(&self, id: u64, len: u64) {
        let mut segs = lock(&self.segs);
        if let Some(m) = segs.iter_mut().find(|m| m.id == id) {
            m.sealed = true;
            m.len = len;
        }
    }

    /// The appender started a new segment. Takes the segment index lock.
    pub(crate) fn push_segment(&self, m: SegMeta) {
        lock(&self.segs).push(m);
    }

    /// Eviction: takes the oldest segment out of the index, other than `keep` (the own
    /// lane's active segment). Consumer guard held; takes the segment index lock.
    pub(crate) fn take_oldest(&self, keep: Option<u64>) -> Option<SegMeta> {
        let mut segs = lock(&self.segs);
        segs.iter()
            .position(|m| Some(m.id) != keep)
            .map(|i| segs.remove(i))
    }

    /// Whether the newest segment holds records (the appender may seal it to evict it).
    pub(crate) fn tail_has_records(&self) -> bool {
        lock(&self.segs).last().is_some_and(|m| m.records > 0)
    }

    /// Expiry: takes out of the index the segments (sealed ones, or any of an adopted lane)
    /// whose newest record was created before `limit_ns`. Consumer guard held; takes the
    /// segment index lock.
    pub(crate) fn take_expired(&self, limit_ns: u64) -> Vec<SegMeta> {
        let adopted = self.adopted;
        let mut segs = lock(&self.segs);
        let (gone, kept): (Vec<SegMeta>, Vec<SegMeta>) = std::mem::take(&mut *segs)
            .into_iter()
            .partition(|m| (m.sealed || adopted) && m.records > 0 && m.newest_ns < limit_ns);
        *segs = kept;
        gone
    }

    /// The ledger takes out of the index the segments whose records are all acknowledged
    /// through `through` (sealed ones, or any of an adopted lane), to delete them, and drops
    /// the reader of one of them. Consumer guard held; takes the segment index lock.
    pub(crate) fn take_doomed(&self, c: &mut Consumer, through: u64) -> Vec<SegMeta> {
        let adopted = self.adopted;
        let gone: Vec<SegMeta> = {
            let mut segs = lock(&self.segs);
            let (gone, kept) = std::mem::take(&mut *segs)
                .into_iter()
                .partition(|m| (m.sealed || adopted) && m.unacked(through) == 0);
            *segs = kept;
            gone
        };
        for m in &gone {
            if c.reading() == Some(m.id) {
                c.reader = None;
            }
        }
        gone
    }

    /// Lets the lane's lock file go (close, or an adopted lane removed).
    pub(crate) fn release_lock(&self) {
        drop(lock(&self.lock_file).take());
    }

    /// The drainer's acknowledgement through `seq`: moves the ack point (in memory; the
    /// caller writes the cursor). Returns false if `seq` was acknowledged already.
    pub(crate) fn acknowledge(&self, c: &mut Consumer, seq: u64) -> bool {
        if seq <= c.acked {
            return false;
        }
        c.acked = seq;
        c.handed = c.handed.max(seq);
        c.settle_limbo(seq);
        c.forget_below_ack();
        self.note_counted(c);
        self.acked.store(seq, Ordering::Release);
        true
    }

    /// The drainer's rewind (see [`Consumer::rewind`]), with the lane's gauges updated.
    pub(crate) fn rewind(&self, c: &mut Consumer) -> (Dropped, Dropped) {
        let lost = c.rewind();
        self.note_counted(c);
        lost
    }

    /// A read found records `from..=to` lost to damage: counts those not counted before
    /// and not in `absent` (see [`Consumer::count_new`]); returns how many.
    pub(crate) fn count_lost(&self, c: &mut Consumer, from: u64, to: u64, absent: &SeqSet) -> u64 {
        let n = c.count_new(from, to, absent);
        self.note_counted(c);
        n
    }

    /// A read found record `seq` (not handed out yet) expired, with nothing before it
    /// outstanding (the reader checks): counts it (returns whether it was counted now:
    /// not if counted before) and moves the ack point past it, so that no later read or
    /// process counts it again once the cursor is written.
    pub(crate) fn expire_record(&self, c: &mut Consumer, seq: u64) -> bool {
        let counted = c.count_new(seq, seq, &SeqSet::default()) == 1;
        c.acked = c.acked.max(seq);
        c.handed = c.acked;
        c.forget_below_ack();
        self.acked.store(c.acked, Ordering::Release);
        self.note_counted(c);
        counted
    }

    /// Records the spool's identity in the own lane if it has none yet (a new lane, or one
    /// written before identities were recorded), before the lane takes a record.
    pub(crate) fn record_identity(&self, fs: &dyn SpoolFs, mine: Option<&str>) -> io::Result<()> {
        if !self.identity_pending.load(Ordering::Acquire) {
            return Ok(());
        }
        identity::write_identity(fs, &self.dir, mine)?;
        self.identity_pending.store(false, Ordering::Release);
        Ok(())
    }

    /// Mirrors the sizes of `c.counted` and `c.limbo` ([`Lane::counted_ahead`],
    /// [`Lane::in_limbo`]); call after changing either.
    pub(crate) fn note_counted(&self, c: &Consumer) {
        self.counted_ahead
            .store(c.counted.count_in(0, u64::MAX), Ordering::Release);
        self.in_limbo
            .store(c.limbo.iter().map(|x| x.records).sum(), Ordering::Release);
    }

    pub(crate) fn cursor_state(&self, acked: u64) -> CursorState {
        CursorState {
            acked_through: acked,
            next_seq: self.next_seq.load(Ordering::Acquire),
        }
    }

    /// Writes the ack point into the cursor's free slot (one `pwrite`, no fsync).
    pub(crate) fn write_cursor(
        &self,
        fs: &dyn SpoolFs,
        c: &mut Consumer,
    ) -> Result<(), SpoolError> {
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
    pub(crate) fn sync_cursor(&self, fs: &dyn SpoolFs) -> Result<(), SpoolError> {
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
