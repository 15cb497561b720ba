//! A lane held by this process (its own, or an adopted one): its segment index, its reader
//! state and cursor, and the bookkeeping that counts each dropped record once.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::cursor::CursorFile;
use crate::error::SpoolError;
use crate::format::CursorState;
use crate::fs::SpoolFs;
use crate::identity;
use crate::index::SegMeta;
use crate::locks::lock;
use crate::recovery;
use crate::scan::FrameReader;
use crate::seqset::SeqSet;
use crate::types::Dropped;

/// One lane held by this process: its own, or an adopted one.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    pub(crate) adopted: bool,
    pub(crate) lock_file: Mutex<Option<File>>,
    /// Segment index, oldest first. Lock order: writer, consumer, segs.
    pub(crate) segs: Mutex<Vec<SegMeta>>,
    pub(crate) consumer: Mutex<Consumer>,
    /// Held across a cursor fdatasync (see [`Lane::sync_cursor`]). Lock order: writer,
    /// cursor_sync, consumer.
    pub(crate) cursor_sync: Mutex<()>,
    /// Mirror of `consumer.acked`, readable without the consumer lock.
    pub(crate) acked: AtomicU64,
    /// Records of `consumer.counted` (readable without the consumer lock, for stats).
    pub(crate) counted_ahead: AtomicU64,
    /// Records of `consumer.limbo`: handed out, their segment dropped since, their fate not
    /// known yet (readable without the consumer lock, for stats).
    pub(crate) in_limbo: AtomicU64,
    /// Newest sequence number stored in the lane (0: none).
    pub(crate) last_seq: AtomicU64,
    /// Next sequence number (own lane: the writer's; adopted: recovered).
    pub(crate) next_seq: AtomicU64,
    /// The own lane has no identity file yet: one is written before its first record.
    pub(crate) identity_pending: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) acked: u64,
    /// The lane's cursor file; every change of `acked` is written to it.
    pub(crate) cursor: CursorFile,
    /// Records up to this seq were handed out (or skipped) since the last rewind.
    pub(crate) handed: u64,
    /// Records above the ack point, still in the segment index, that a read counted as
    /// dropped already: expired (read ahead of records still outstanding), or lost to
    /// damage found after open. Not reset by a rewind, so that a record read again is not
    /// counted again; not counted as waiting either (see [`Lane::counted_ahead`]).
    pub(crate) counted: SeqSet,
    pub(crate) reader: Option<(u64, FrameReader)>,
    /// Records handed out and not yet acknowledged whose segment was evicted or expired
    /// meanwhile: an ack counts them delivered; a rewind counts them lost (in `lost`).
    pub(crate) limbo: Vec<Limbo>,
    /// Records of `limbo` found lost by a rewind, reported by the next read of the lane.
    pub(crate) lost: Lost,
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
pub(crate) struct Limbo {
    /// Sequence numbers `from..=to` of the dropped segment that were handed out.
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) cause: DropCause,
}

/// Lost records waiting to be reported by the next read (all of them already in the
/// spool's counters).
#[derive(Debug, Default)]
pub(crate) struct Lost {
    pub(crate) evicted: Dropped,
    pub(crate) expired: Dropped,
    /// Records already in the spool's counters (lost to damage, or missing, found by
    /// recovery) that no reader was told of yet: the next read reports them in
    /// `ReadBatch::corrupt_skipped`, so a caller counting its drops from reads counts them.
    pub(crate) unreported: u64,
}

impl Consumer {
    /// Counts the records `from..=to` as dropped, those not counted before and not in
    /// `absent` (numbers recovery found missing and counted); returns how many.
    pub(crate) fn count_new(&mut self, from: u64, to: u64, absent: &SeqSet) -> u64 {
        self.counted
            .insert_new(from.max(self.acked + 1), to, absent)
    }

    /// The ack point moved: what is at or below it is never read again.
    pub(crate) fn forget_below_ack(&mut self) {
        self.counted.remove_through(self.acked);
    }

    /// Splits a segment being dropped (evicted or expired) into the records no one has seen,
    /// counted into `now`, and those handed out and not acknowledged, kept in limbo until an
    /// ack (delivered) or a rewind (lost) says what became of them. Each record is counted
    /// once: delivered or dropped, never both.
    pub(crate) fn drop_counts(&mut self, m: &SegMeta, cause: DropCause, now: &mut Dropped) {
        let per = |n: u64| m.framed_bytes_of(n);
        // Records a read counted already (expired, lost to damage) are neither unread nor in
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
    pub(crate) fn settle_limbo(&mut self, seq: u64) {
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
